"""OpenAI's fine-tuning API served by ftops: the wire shapes and routes (``api.py``), the durable store of files,
jobs and events (``store.py``), the executors that run a job's train and gate steps on this host (``runner.py``) or
as Kubernetes Jobs (``k8s_executor.py``), and the app built from a config (``service.py``)."""
