# One image for every crmsync service; the command picks the service (`crmsync service <name>`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY crmsync ./crmsync
COPY services ./services
COPY streams ./streams
COPY connectors ./connectors
COPY sandboxes ./sandboxes
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["crmsync"]
CMD ["--help"]
