"""The HTTP service: FastAPI on uvicorn, micro-batched predictions, and the drawing page.

- app.py: ``create_app(predictor)``, the routes;
- batcher.py: the micro-batcher (many requests' images, one forward pass);
- inputs.py: a request's image (upload or JSON pixels), read and preprocessed;
- guard.py: the Host check, body limits, log lines and metrics, at the ASGI edge;
- connections.py: header limits, read timeouts, the connection limit, in uvicorn's protocol;
- static.py: the drawing page and its files;
- model.py: the model the service runs (a run exported to ONNX in memory at start);
- server.py: ``serve(run, ...)``, uvicorn on a socket, one or several worker processes.

Importing this package imports none of them (nor FastAPI, nor torch): names are loaded on
first use, so that ``mnist-cnn --help`` and ``import mnist_cnn`` stay quick.
"""

from .. import lazy_getattr

_WHERE = {
    "create_app": "app",
    "ModelInfo": "model",
    "model_info": "model",
    "serve": "server",
}


__getattr__ = lazy_getattr(__name__, _WHERE)


__all__ = ["ModelInfo", "create_app", "model_info", "serve"]
