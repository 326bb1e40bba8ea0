"""Deploy helpers run after `sam deploy`: publish the frontend to its bucket with a
config.json made from the stack's outputs, invalidate CloudFront, store the OpenAI key."""
