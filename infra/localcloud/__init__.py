"""The embedded local cloud: AWS emulator, provisioning from template.yaml, the SQS event
source poller, a fake OpenAI, and the ``up`` orchestrator. Never deployed."""
