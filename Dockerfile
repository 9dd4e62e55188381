# syntax=docker/dockerfile:1
# A CI image with deployer-ci preinstalled, so that deploy jobs start without installing anything:
#
#   docker build -t registry.example.com/ops/deployer-ci:0.1.0 .
#   docker push registry.example.com/ops/deployer-ci:0.1.0
#
# then `image: registry.example.com/ops/deployer-ci:0.1.0` in the GitLab component's inputs (or on a
# job extending `.deployer`): the job finds this version of deployer on its PATH and skips the
# virtualenv. A slim Python with the wheel installed and nothing else; no ENTRYPOINT, because GitLab
# and GitHub run their job scripts through the image's shell. See docs/gitlab.md.
FROM python:3.12-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deployer ./deployer
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheel .

FROM python:3.12-slim
# The wheel is mounted, not copied: no layer keeps it after the install.
RUN --mount=type=bind,from=wheel,source=/wheel,target=/wheel \
    pip install --no-cache-dir --disable-pip-version-check /wheel/deployer_ci-*.whl \
 && deployer --version
ENV PYTHONUNBUFFERED=1
CMD ["deployer", "--help"]
