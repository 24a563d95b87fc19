"""
A GTK 3 window for browser tests: a green area and a text entry that has the
focus; pressing Enter writes the entry's text to the file named by argv[1].

Run with Debian's /usr/bin/python3 (python3-gi, gir1.2-gtk-3.0; no cairo bindings needed), e.g. on
Broadway: GDK_BACKEND=broadway BROADWAY_DISPLAY=:5 python3 gtk_recorder.py out.txt
"""

import sys

import gi

gi.require_version("Gtk", "3.0")
from gi.repository import Gtk  # noqa: E402


def main(path: str) -> None:
    """Show the window; record the entry's text on Enter."""
    window = Gtk.Window(title="tunnelgw recorder")
    window.set_default_size(400, 300)
    window.move(0, 0)
    box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL)
    area = Gtk.Box()
    area.set_size_request(400, 260)
    area.set_name("green")
    css = Gtk.CssProvider()
    css.load_from_data(b"#green { background-color: #00cc00; }")
    Gtk.StyleContext.add_provider_for_screen(window.get_screen(), css, Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION)
    entry = Gtk.Entry()

    def activate(widget: Gtk.Entry) -> None:
        with open(path, "w") as f:
            f.write(widget.get_text())

    entry.connect("activate", activate)
    box.pack_start(area, True, True, 0)
    box.pack_start(entry, False, False, 0)
    window.add(box)
    window.connect("destroy", Gtk.main_quit)
    window.show_all()
    entry.grab_focus()
    Gtk.main()


if __name__ == "__main__":
    main(sys.argv[1])
