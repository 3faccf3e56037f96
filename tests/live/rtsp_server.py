"""A real RTSP server for tests: GStreamer's gst-rtsp-server through Debian's python3-gi.

Run with the system interpreter (`/usr/bin/python3 rtsp_server.py PORT`): it serves a live test
pattern (Motion JPEG) and a tone (PCMA, 8 kHz) at rtsp://127.0.0.1:PORT/test, prints `ready`, and runs
until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LAUNCH = ("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=128,height=96,framerate=10/1 "
          "! videoconvert ! video/x-raw,format=I420 ! jpegenc ! rtpjpegpay name=pay0 pt=26 "
          "audiotestsrc is-live=true freq=440 ! audioconvert ! audioresample ! audio/x-raw,rate=8000,channels=1 "
          "! alawenc ! rtppcmapay name=pay1 pt=8 )")


def main() -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1])
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH)
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
