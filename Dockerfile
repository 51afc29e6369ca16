# One image for every Orchard service; SERVICE picks which one a container runs.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY orchard_cli orchard_cli
COPY apple_sandbox apple_sandbox
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 orchard
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl "setuptools<82" && rm -rf /wheels
WORKDIR /app
COPY deploy/config.yaml deploy/config.yaml
COPY deploy/entrypoint.sh /usr/local/bin/orchard-service
USER orchard
# the configuration the services, migrations and the orchard CLI read inside the container
ENV PYTHONUNBUFFERED=1 ORCHARD_CONFIG=/app/deploy/config.yaml
# metrics: push 9101, enrollment 9102, vpp 9103, roster 9104, directory 9105; HTTP: enrollment 8102, vpp 8103, roster 8104
EXPOSE 9101-9105 8102-8104
ENTRYPOINT ["orchard-service"]
