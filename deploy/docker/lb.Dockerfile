# fabricserve-lb: nginx (Debian's) balancing gRPC calls, not connections, over every frontend
# replica (HTTP/2 to the frontends through grpc_pass). From the repository root:
#   docker build -f deploy/docker/lb.Dockerfile -t fabricserve-lb .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
COPY deploy/docker/install-os.sh /usr/local/lib/fabricserve/
RUN sh /usr/local/lib/fabricserve/install-os.sh nginx-light \
    && rm -f /etc/nginx/sites-enabled/default
COPY deploy/docker/nginx.conf /etc/fabricserve/nginx.conf
COPY deploy/docker/lb-entrypoint.sh deploy/docker/probe-http /usr/local/lib/fabricserve/
USER 10001:10001
EXPOSE 8001
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/lib/fabricserve/lb-entrypoint.sh"]
