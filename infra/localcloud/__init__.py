"""The embedded local cloud: AWS emulator, provisioning from template.yaml, the SQS event
source poller, a fake OpenAI, and the ``up`` orchestrator. Never deployed."""

# Where a local stack's AWS services can run (see aws.py and emulators.py).
TARGETS = ("moto", "dynamodb-local", "localstack", "external")
