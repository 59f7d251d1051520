# The streamrec image: one install, run as `streamrec worker` or `streamrec serve`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY features features
COPY streams streams
COPY serving serving
COPY streamrec streamrec
RUN pip install --no-cache-dir . && useradd --create-home streamrec
USER streamrec
EXPOSE 8000
CMD ["streamrec", "serve", "--host", "0.0.0.0"]
