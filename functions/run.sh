#!/bin/bash
# Lambda Web Adapter entry point of the stream function (Handler: run.sh): the adapter
# (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap) starts this and proxies the function URL to it.
PATH=$PATH:$LAMBDA_TASK_ROOT/bin \
  PYTHONPATH=$PYTHONPATH:/opt/python:$LAMBDA_RUNTIME_DIR \
  exec python -m uvicorn --port="${PORT:-8000}" --no-access-log llmstream.stream:app
