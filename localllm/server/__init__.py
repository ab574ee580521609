"""`localllm serve`: an OpenAI- and ollama-compatible HTTP server (Starlette on uvicorn, from the
optional `server` extra) with continuous batching over `parallel` slots.

    handle = localllm.serve(llm, port=0)     # in-process; handle.url, handle.stop()
"""
from __future__ import annotations

import logging
import socket
import threading
import time

from ..errors import LocalLLMError

log = logging.getLogger(__name__)


class ServerHandle:
    """A running server: `url`, `attach(llm)` (when started without a model), `stop()`."""

    def __init__(self, server, thread: threading.Thread, state, url: str) -> None:
        self._server, self._thread, self.state, self.url = server, thread, state, url

    def attach(self, llm, name: str | None = None) -> None:
        self.state.attach(llm, name)

    def stop(self) -> None:
        """Running streams end with an error event, then the server closes."""
        self.state.stop()
        self._server.should_exit = True
        self._thread.join(timeout=30)


def serve(llm=None, host: str = "127.0.0.1", port: int = 8080, parallel: int = 4, queue_size: int = 64,
          api_key: str | None = None, cors_origin: str | None = None, model_name: str | None = None) -> ServerHandle:
    """Serve llm over HTTP from a background thread; port 0 picks a free port (see handle.url).
    Without llm the server answers 503 until handle.attach(llm)."""
    try:
        import uvicorn
        from .app import ServerState, create_app
    except ImportError as e:
        raise LocalLLMError(f"the server needs its extra: pip install 'localllm[server]' ({e})") from None
    state = ServerState(api_key, parallel, queue_size)
    if llm is not None:
        state.attach(llm, model_name)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise LocalLLMError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    config = uvicorn.Config(create_app(state, cors_origin), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="localllm-http", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    bound = sock.getsockname()[1]
    name = f"[{host}]" if ":" in host else host
    return ServerHandle(server, thread, state, f"http://{name}:{bound}")


def run_until_signal(model: str, host: str, port: int, parallel: int, queue_size: int, api_key: str | None,
                     cors_origin: str | None, **load_args) -> None:
    """The `localllm serve` command: listen at once (/health says 503 while the model loads),
    print the URL when ready, stop cleanly on SIGINT or SIGTERM."""
    import signal

    import click

    from ..api import load
    handle = serve(None, host, port, parallel, queue_size, api_key, cors_origin)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        handle.attach(load(model, **load_args))
        click.echo(f"localllm: serving {handle.state.model} at {handle.url} (OpenAI API at {handle.url}/v1)")
        while not stop.wait(0.5):
            pass
    finally:
        click.echo("localllm: stopping", err=True)
        handle.stop()
