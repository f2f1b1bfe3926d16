"""`vlfss app`: safe defaults (this machine only, no share link), and clear messages before anything starts."""

from __future__ import annotations

import sys

from vlfss.cli import build_parser, main


def test_app_defaults_bind_locally_without_a_share_link():
    args = build_parser().parse_args(["app"])
    assert args.host == "127.0.0.1" and args.share is False
    assert args.max_upload_mb > 0 and args.max_image_mp > 0 and args.concurrency >= 1
    args = build_parser().parse_args(["app", "--host", "0.0.0.0", "--port", "9000", "--share", "--max-upload-mb", "3"])
    assert (args.host, args.port, args.share, args.max_upload_mb) == ("0.0.0.0", 9000, True, 3.0)


def test_app_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the `app` extra were not installed
    assert main(["app"]) == 2
    assert 'pip install "vlfss[app]"' in capsys.readouterr().err


def test_app_refuses_bad_limits_before_starting(capsys):
    assert main(["app", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err
