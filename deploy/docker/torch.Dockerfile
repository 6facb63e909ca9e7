# The worker's virtualenv: the project's dependencies (the `deps` stage of ./Dockerfile, tagged
# by the Makefile) plus torch. Built from the small context deploy/docker/.build so that the
# torch wheel is sent to the daemon only here, not with every tier's context.
#   TORCH_SPEC  the pip requirement; default: the CPU build, found in ./wheels when the Makefile
#               put it there (no multi-GB CUDA download). CUDA, e.g.:
#               "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
#                --extra-index-url https://pypi.org/simple"  (and no CPU wheel in ./wheels)
ARG DEPS_IMAGE=fabricserve-build:deps
FROM ${DEPS_IMAGE}
ARG TORCH_SPEC="torch==2.13.0"
COPY wheels/ /tmp/wheels/
# TORCH_SPEC is split into words on purpose: it may carry index options.
RUN pip install -q --find-links /tmp/wheels ${TORCH_SPEC} && rm -rf /tmp/wheels
