"""llmstream: the code deployed to AWS Lambda (api, worker and stream functions)."""
