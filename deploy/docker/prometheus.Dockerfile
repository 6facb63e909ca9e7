# fabricserve-prometheus: Debian's Prometheus with a config that finds every replica of every
# tier through Docker's DNS. From the repository root:
#   docker build -f deploy/docker/prometheus.Dockerfile -t fabricserve-prometheus .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
COPY deploy/docker/install-os.sh /usr/local/lib/fabricserve/
# The web UI loads moment-timezone's bundled builds; its raw data directory (210 MB) and
# promtool (46 MB) are never used here.
RUN sh /usr/local/lib/fabricserve/install-os.sh prometheus \
    && rm -rf /usr/share/javascript/moment-timezone/data /usr/bin/promtool \
    && install -d -o 10001 -g 10001 /prometheus
COPY deploy/docker/prometheus.yml /etc/fabricserve/prometheus.yml
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/prometheus", \
            "--config.file=/etc/fabricserve/prometheus.yml", \
            "--storage.tsdb.path=/prometheus", "--storage.tsdb.retention.time=2d", \
            "--web.listen-address=:9090"]
