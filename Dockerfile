# One image for every Rivulet service; docker-compose picks the module per container.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY loadtests ./loadtests
RUN pip install --no-cache-dir . && useradd --create-home rivulet && mkdir -p /data && chown rivulet /data
USER rivulet
ENV RIVULET_DATA_DIR=/data PYTHONUNBUFFERED=1
CMD ["python", "-m", "services.serving"]
