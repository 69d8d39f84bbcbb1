"""OpenAI's fine-tuning API served by ftops: the wire shapes (``protocol.py``), one router per resource
(``files.py``, ``fine_tuning.py``) over what a route reads from its request (``dependencies.py``), the app built from
them with its OpenAPI part (``api.py``), the durable store of files, jobs and events (``store.py``), the executors
that run a job's train and gate steps on this host (``runner.py``) or as Kubernetes Jobs (``k8s_executor.py``), and
the app and executor built from a config (``service.py``)."""
