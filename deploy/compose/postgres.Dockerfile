# PostgreSQL for the compose demo (build context: deploy/compose), from Debian's packages on
# the same base as the app image, so the demo needs no other registry than Debian's mirror (and
# none with a wheelhouse-built app image and a local base). It holds two databases: `mlflow`
# (MLflow's store) and `sigserve` (the controller's), each with its own role; the password
# comes from the secrets volume.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# No cluster from the package's postinst: the entrypoint makes one in the volume.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)" /usr/local/lib/postgresql-bin \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/local/lib/postgresql-bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
