"""The resident service (``python -m runtime serve``): the model and the index loaded once, answering
searches over HTTP (``http``), with queries batched as they arrive (``batching``), every store call
on one thread (``service``) and Prometheus metrics (``metrics``)."""
