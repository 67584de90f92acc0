"""The Maestro terminal UI (Textual): ``maestro tui``.

A composition root: it may import the whole of Maestro, but nothing outside this package
and ``maestro/commands/tui.py`` imports it, so ``import maestro`` never pulls in Textual.
Build the app with :func:`maestro.tui.app.create_app` and a :class:`maestro.tui.services.Services`.
"""
