"""``deeplungreg review``: the review page, served on localhost by trame-slicer.

The page is built from Slicer's own MRML classes: a trame-slicer application holds an MRML scene and
three slice views rendered on the server (remote-controlled areas); the registration's outputs become
the same nodes as in the Slicer module (:func:`~DeepLungRegLib.slicer_bridge.workflow.write_nodes`),
and the landmark review is the module's: the registration's own
:class:`~DeepLungRegLib.evaluation.review.LandmarkReview`, driven by the same
:class:`~DeepLungRegLib.evaluation.review.ReviewController` and drawn by the same
:class:`~DeepLungRegLib.slicer_bridge.review.ReviewScene`; this page is an adapter that calls the controller
from its buttons and refreshes its panel on the controller's events. The overlay menu lists the output
roles of :mod:`DeepLungRegLib.io.roles` that the folder has.

Needs the ``review`` extra: ``pip install 'DeepLungRegLib[review]'``.

The server answers only its own page (:func:`protect`): each launch makes a random token, which the
printed URL carries (``?secret=...``, trame's client sends it in wslink's hello) and which the server
checks before it answers anything; a WebSocket whose ``Origin`` is not the served address is refused
(403) before it opens; and a host other than loopback needs ``allow_remote`` (``--allow-remote``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import DeepLungRegError
from ..evaluation.review import ORDER_NAMES
from ..io.roles import overlays
from .folder import ReviewFolder

#: What the overlay menu offers, by node role, with its label (from the table of output roles).
OVERLAYS = overlays()


def missing_dependencies() -> list[str]:
    """The packages of the ``review`` extra that are not installed."""
    import importlib.util

    return [pkg for pkg, mod in (("slicer-core", "slicer"), ("trame-slicer", "trame_slicer"), ("trame-vuetify", "trame_vuetify"),
                                 ("slicer-layer-dm", "slicer_layer_dm")) if importlib.util.find_spec(mod) is None]


class ReviewPage:
    """The scene, the views and the page of one registration output folder.

    Attributes:
        folder: the checked folder.
        server: the trame server (``server.start(...)`` serves the page).
        review: the landmark review (the registration's own), or ``None`` without landmarks.
        controller: its :class:`~DeepLungRegLib.evaluation.review.ReviewController`, or ``None``.
        nodes: the Slicer bridge's :class:`~DeepLungRegLib.slicer_bridge.workflow.NodeRegistration`.
        startup_s: seconds from the start to the page being ready to serve.
    """

    def __init__(self, folder: ReviewFolder, server=None) -> None:
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen where there is no display
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        from ..pipeline import looks_like_ct
        from ..slicer_bridge import volume_node_from_image
        from ..evaluation.review import ReviewController
        from ..slicer_bridge import RegistrationNodes
        from ..slicer_bridge.review import ReviewScene
        from ..slicer_bridge.workflow import write_nodes

        t0 = time.perf_counter()
        self.folder = folder
        self.server = get_server(server or f"deeplungreg-review-{id(self)}", client_type="vue3")  # one server per page
        self.state, self.ctrl = self.server.state, self.server.controller
        self.app = SlicerApp()
        import slicer

        self.app.scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # the maps' legends, as in Slicer
        register_rca_factories(self.app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.app.scene, self.app.view_manager, self.server)
        self.layout_manager.register_layout_dict({"review": Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.sagittal_view()])})
        self.layout_manager.set_layout("review")

        job, out = folder.job(), folder.outputs()
        scene = self.app.scene
        self.fixed_node = volume_node_from_image(scene, job.fixed, "fixed")
        self.moving_node = volume_node_from_image(scene, job.moving, "moving")
        for node, image in ((self.fixed_node, job.fixed), (self.moving_node, job.moving)):
            display = node.GetDisplayNode()
            if display is not None and looks_like_ct(image):  # the lung window
                display.AutoWindowLevelOff()
                display.SetWindowLevel(1400, -500)
        self.nodes = write_nodes(scene, job, out, RegistrationNodes(self.fixed_node, self.moving_node))
        self.review = self.nodes.review
        self.controller = self.review_scene = None
        if self.review is not None:
            self._fixed_landmarks_node(job)
            self.controller = ReviewController(self.review)
            self.review_scene = ReviewScene(scene, self.controller, self.nodes.landmarks, self.nodes.tre_table)
            self.controller.observe(lambda event: self._refresh())
        self._fitted: dict[str, tuple[int, int]] = {}
        for view in self.app.view_manager.get_slice_views():  # fit each view to the fixed volume once the page has given it its size
            view.interactor().AddObserver("WindowResizeEvent", lambda *_, v=view: self._fit(v))
        self._init_state()
        self._build_ui()
        if self.controller is not None:
            self.controller.worst()
        self.startup_s = time.perf_counter() - t0

    def _fixed_landmarks_node(self, job):
        from ..slicer_bridge import markups_from_landmarks

        node = markups_from_landmarks(self.app.scene, job.fixed_landmarks, "fixed landmarks", labels=job.landmark_labels)
        display = node.GetDisplayNode()
        display.SetTextScale(0)  # the warped landmarks carry the labels
        display.SetSelectedColor(1.0, 0.85, 0.1)
        display.SetGlyphType(display.Cross2D)
        display.SetGlyphScale(4.0)
        for i in range(node.GetNumberOfControlPoints()):
            node.SetNthControlPointLocked(i, True)
        self.fixed_landmarks = node
        return node

    # ------------------------------------------------------------------ state
    def _init_state(self) -> None:
        s, views = self.state, self.folder.views
        s.trame__title = f"DeepLungReg review: {self.folder.path.name}"
        s.folder_name = str(self.folder.path)
        s.summary = self.nodes.summary
        s.overlays = [{"value": k, "title": v} for k, v in OVERLAYS.items() if k == "warped" or views.get(k)]
        s.overlay = "warped"
        s.opacity = 0.5
        s.show_grid = True
        s.legend = None
        s.has_landmarks = self.review is not None
        s.order = "tre"
        s.orders = [{"value": o, "title": ORDER_NAMES[o]} for o in (self.review.orders() if self.review is not None else ("tre", "index"))]
        s.editable = False
        s.comment = ""
        s.overwrite = False
        s.message = ""
        s.current = ""
        s.review_summary = ""
        s.rows = []
        s.current_index = -1
        s.change("overlay", "opacity")(self._on_overlay)
        s.change("show_grid")(self._on_grid)
        s.change("editable")(self._on_editable)
        s.change("order")(self._on_order)

    def _on_overlay(self, overlay: str = "warped", opacity: float = 0.5, **_) -> None:
        from ..slicer_bridge.workflow import show_overlay

        node = getattr(self.nodes, overlay, None) or self.nodes.warped
        show_overlay(self.app.scene, self.fixed_node, node, float(opacity))
        self.state.legend = self._legend(node) if overlay != "warped" else None

    @staticmethod
    def _legend(node) -> dict:
        """The colour scale of a map node for the page's legend: its title, the range its window covers
        and its colours (sampled from the node's colour table) as a CSS gradient."""
        from ..slicer_bridge.workflow import ROLE_ATTRIBUTE

        display = node.GetDisplayNode()
        lo, hi = display.GetLevel() - display.GetWindow() / 2, display.GetLevel() + display.GetWindow() / 2
        table = display.GetColorNode().GetLookupTable()
        n = table.GetNumberOfTableValues()
        stops = []
        for k in range(9):
            rgba = table.GetTableValue(round(k * (n - 1) / 8))
            stops.append("rgb({}, {}, {})".format(*(int(round(255 * c)) for c in rgba[:3])))
        role = node.GetAttribute(ROLE_ATTRIBUTE) or ""
        return {"title": OVERLAYS.get(role, node.GetName()), "low": f"{lo:.2f}", "mid": f"{(lo + hi) / 2:.2f}", "high": f"{hi:.2f}",
                "gradient": f"linear-gradient(to right, {', '.join(stops)})"}

    def _fit(self, view) -> None:
        """Fit a view to the fixed volume at the size the page gave it (again when that size changes), then
        move its slice through the current landmark (the image stays in place)."""
        from ..slicer_bridge.grid import fit_slice_view

        width, height = view.render_window().GetSize()
        if min(width, height) < 32 or self._fitted.get(view.get_view_node_id()) == (width, height):
            return
        self._fitted[view.get_view_node_id()] = (width, height)
        fit_slice_view(self.app.app_logic.GetSliceLogic(view.get_view_node()), self.fixed_node, (width, height))
        if self.review_scene is not None:
            self.review_scene.centre()

    def _on_grid(self, show_grid: bool = True, **_) -> None:
        from ..slicer_bridge.grid import set_grid_visible

        set_grid_visible(self.app.scene, self.nodes.transform, bool(show_grid))

    def _on_editable(self, editable: bool = False, **_) -> None:
        if self.controller is not None:
            self.controller.set_editable(bool(editable))

    def _on_order(self, order: str = "tre", **_) -> None:
        if self.controller is not None and order != self.controller.order:
            self.controller.set_order(order)

    # ------------------------------------------------------------------ review actions (the controller's)
    def show_landmark(self, index: int) -> None:
        """Make landmark ``index`` the current one and centre the three views on it."""
        self.controller.select(int(index))

    def worst(self) -> None:
        self.controller.worst()

    def step(self, offset: int) -> None:
        self.controller.order = self.state.order
        self.controller.step(int(offset))

    def mark(self, status: str) -> None:
        self.controller.mark(status, self.state.comment)

    def export(self) -> list[Path]:
        """Write the review into the output folder (never over the registration's files)."""
        try:
            written = self.controller.export(self.folder.path, overwrite=bool(self.state.overwrite))
        except (DeepLungRegError, OSError) as exc:  # one line on the page, whatever stopped the export
            self.state.message = str(exc) if isinstance(exc, DeepLungRegError) else f"review: cannot export into {self.folder.path}: {exc}"
            self.state.flush()
            return []
        self.state.message = f"Exported {', '.join(p.name for p in written)} into {self.folder.path}"
        self.state.flush()
        return written

    def _refresh(self) -> None:
        c, s = self.controller, self.state
        s.current_index = c.current
        s.current = c.describe()
        s.comment = c.comment()
        s.review_summary = c.summary_text()
        s.rows = c.rows()
        s.flush()

    # ------------------------------------------------------------------ page
    def _build_ui(self) -> None:
        from trame.widgets import html, vuetify3 as v
        from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

        with SinglePageWithDrawerLayout(self.server) as layout:
            layout.title.set_text("DeepLungReg review")
            with layout.toolbar:
                v.VSpacer()
                html.Div("{{ folder_name }}", classes="text-caption mr-4", id="folder")
            with layout.drawer as drawer:
                drawer.width = 420
                with html.Div(classes="pa-3"):
                    html.Pre("{{ summary }}", classes="text-caption", id="summary", style="white-space: pre-wrap")
                    v.VSelect(v_model=("overlay",), items=("overlays",), label="Overlay", density="compact", id="overlay",
                              hide_details=True, classes="mb-2")
                    v.VSlider(v_model=("opacity",), min=0, max=1, step=0.05, label="Opacity", density="compact",
                              hide_details=True, id="opacity")
                    v.VCheckbox(v_model=("show_grid",), label="Deformation grid", density="compact", hide_details=True,
                                id="grid")
                    with html.Div(v_if="legend", id="legend", classes="mb-3"):
                        html.Div("{{ legend.title }}", classes="text-caption")
                        html.Div(style=("{height: '12px', background: legend.gradient}",))
                        with html.Div(style="display: flex; justify-content: space-between", classes="text-caption"):
                            html.Span("{{ legend.low }}")
                            html.Span("{{ legend.mid }}")
                            html.Span("{{ legend.high }}")
                    with html.Div(v_if="has_landmarks", id="review"):
                        v.VDivider(classes="my-2")
                        html.Div("Landmark review", classes="text-subtitle-1")
                        with html.Div(classes="d-flex ga-1 my-1"):
                            v.VBtn("Worst", id="worst", size="small", click=self.worst)
                            v.VBtn("Previous", id="previous", size="small", click=(self.step, "[-1]"))
                            v.VBtn("Next", id="next", size="small", click=(self.step, "[1]"))
                            v.VSelect(v_model=("order",), items=("orders",),
                                      density="compact", hide_details=True, id="order")
                        html.Div("{{ current }}", id="current", classes="text-body-2 my-1")
                        v.VTextField(v_model=("comment",), label="Comment", density="compact", hide_details=True, id="comment")
                        with html.Div(classes="d-flex ga-1 my-1"):
                            v.VBtn("Accept", id="accept", size="small", color="success", click=(self.mark, "['accepted']"))
                            v.VBtn("Flag", id="flag", size="small", color="error", click=(self.mark, "['flagged']"))
                        v.VCheckbox(v_model=("editable",), label="Correct points by dragging the warped landmarks",
                                    density="compact", hide_details=True, id="editable")
                        html.Div("{{ review_summary }}", id="review-summary", classes="text-caption my-1")
                        with html.Div(classes="d-flex ga-1 align-center"):
                            v.VBtn("Export review", id="export", size="small", click=self.export)
                            v.VCheckbox(v_model=("overwrite",), label="replace an earlier review", density="compact",
                                        hide_details=True, id="overwrite")
                        html.Div("{{ message }}", id="message", classes="text-caption")
                        with v.VTable(density="compact", height="320px", fixed_header=True, id="tre-table"):
                            with html.Thead():
                                with html.Tr():
                                    for title in ("Landmark", "TRE before", "TRE after", "Status"):
                                        html.Th(title)
                            with html.Tbody():
                                with html.Tr(v_for="row in rows", key="row.index", click=(self.show_landmark, "[row.index]"),
                                             style=("{cursor: 'pointer', background: row.index === current_index ? '#e3f2fd' : ''}",)):
                                    html.Td("{{ row.label }}")
                                    html.Td("{{ row.before }}")
                                    html.Td("{{ row.after }}")
                                    html.Td("{{ row.status }}")
            with layout.content:
                with html.Div(style="height: calc(100vh - 64px); display: flex;", id="views"):
                    self.layout_manager.initialize_layout_grid(layout)
        self.ui = layout
        self._on_overlay()


@contextmanager
def _own_argv():
    """trame reads its options from ``sys.argv``; the command line's own arguments are not for it."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


#: Hosts that mean "every interface" (aiohttp binds all of them for these).
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def is_loopback(host: str) -> bool:
    """Whether serving on ``host`` (an address or a name) reaches this computer only: a loopback address,
    ``localhost``, or a name all of whose addresses are loopback."""
    if host.lower() == "localhost":
        return True
    if host in WILDCARD_HOSTS:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise DeepLungRegError(f"review: --host {host} is not an address of this computer ({exc})") from exc
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_host(host: str, allow_remote: bool = False) -> str | None:
    """``None`` for a loopback ``host``; for another, the warning to show when ``allow_remote``, else a refusal."""
    if is_loopback(host):
        return None
    if not allow_remote:
        raise DeepLungRegError(f"review: --host {host or repr(host)} would let other computers reach the page; "
                               "serve on 127.0.0.1 (the default), or pass --allow-remote if that is what you want")
    return (f"review: warning: --host {host or repr(host)} lets other computers reach the page: anyone who has its "
            "URL (with the token in it) can see this registration and export its review")


def new_token() -> str:
    """A random per-launch token (256 bits). trame's client turns URL parameters that look like numbers
    into numbers, so the token always holds a letter that no number has."""
    while True:
        token = secrets.token_urlsafe(32)
        if re.search("[g-hj-mp-wzG-HJ-MP-WZ]", token):
            return token


def _address(text: str) -> str:
    """An address or a name as compared here: lower case, IPv4-mapped IPv6 as IPv4, no brackets."""
    text = text.strip("[]").lower()
    try:
        ip = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return text
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


def origin_allowed(origin: str | None, local: tuple, host: str) -> bool:
    """Whether a WebSocket's ``Origin`` is the page this server serves: ``http://`` with the port and the
    address the connection reached (``local``: the socket's own address and port), or a name of it:
    ``localhost`` on loopback, the ``host`` served on, this computer's name when not on loopback."""
    if not origin or not local:
        return False
    try:
        url = urlsplit(origin)
        port = url.port or 80
    except ValueError:
        return False
    if url.scheme != "http" or not url.hostname or port != int(local[1]):
        return False
    reached = _address(str(local[0]))
    names = {reached}
    if host not in WILDCARD_HOSTS:
        names.add(_address(host))
    if ipaddress.ip_address(reached).is_loopback:
        names.add("localhost")
    if not is_loopback(host):
        names.update(_address(n) for n in (socket.gethostname(), socket.getfqdn()))
    return _address(url.hostname) in names


def protect(server, token: str, host: str) -> None:
    """Make the trame ``server`` answer only its own page: wslink's hello must carry ``token`` (compared in
    constant time; until then wslink answers every call "Unauthorized" and publishes nothing), and a
    WebSocket request whose ``Origin`` is not the served address is refused with 403 before it opens.
    Call before ``server.start``."""
    from aiohttp import web
    from wslink.websocket import LinkProtocol

    class TokenCheck(LinkProtocol):
        async def validateToken(self, given, client_id):  # noqa: N802 (wslink's name)
            return isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())

    @web.middleware
    async def same_origin(request, handler):
        websocket = request.headers.get("Upgrade", "").lower() == "websocket" or request.path.rstrip("/").endswith("/ws")
        if websocket:
            local = request.transport.get_extra_info("sockname") if request.transport is not None else None
            if not origin_allowed(request.headers.get("Origin"), local, host):
                raise web.HTTPForbidden(text="deeplungreg review: this page's WebSocket is for the page it serves only\n")
        return await handler(request)

    server.cli.set_defaults(authKey=token)  # wslink's own secret is the token as well
    server.add_protocol_to_configure(lambda protocol: protocol.registerLinkProtocol(TokenCheck()))
    server.controller.on_server_bind.add(lambda wslink_server, **_: wslink_server.app.middlewares.append(same_origin))


def page_url(host: str, port: int, token: str) -> str:
    """The URL that opens the page (with its token)."""
    shown = socket.gethostname() if host in WILDCARD_HOSTS else f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/?secret={token}"


def serve(folder: str | Path, *, port: int = 8080, host: str = "127.0.0.1", open_browser: bool = False,
          fixed: str | None = None, moving: str | None = None, ready=None, allow_remote: bool = False, warn=None) -> None:
    """Check ``folder``, build the page and serve it until interrupted (``ready(url, page)`` once it is up,
    with the page's URL and token). A ``host`` other than loopback is refused unless ``allow_remote``, and
    then warned about through ``warn(line)`` (default: the ``logging`` warning)."""
    warning = check_host(host, allow_remote)  # the arguments before the folder, the folder before the packages
    if warning:
        (warn or logging.getLogger(__name__).warning)(warning)
    checked = ReviewFolder.open(folder, fixed=fixed, moving=moving)
    missing = missing_dependencies()
    if missing:
        raise DeepLungRegError(f"review: needs {', '.join(missing)}: pip install 'DeepLungRegLib[review]'")
    page = ReviewPage(checked)
    token = new_token()
    protect(page.server, token, host)

    def on_ready(**_) -> None:
        url = page_url(host, page.server.port or port, token)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        if ready:
            ready(url, page)

    page.ctrl.on_server_ready.add(on_ready)
    with _own_argv():
        page.server.start(port=port, host=host, open_browser=False, show_connection_info=False, timeout=0)
