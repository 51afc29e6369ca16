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
ENV PYTHONUNBUFFERED=1
EXPOSE 9100 8100
ENTRYPOINT ["orchard-service"]
