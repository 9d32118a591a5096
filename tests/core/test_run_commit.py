"""run_info.json's git_commit: the checkout's HEAD where scorelift runs from one, else what
whoever copied the tree recorded in $SCORELIFT_GIT_COMMIT (a GPU machine gets the tree without
.git), else None."""

from __future__ import annotations

import subprocess

import scorelift.run_info as run_info


def test_a_checkout_gives_its_head(monkeypatch):
    monkeypatch.setenv("SCORELIFT_GIT_COMMIT", "not-this")
    head = subprocess.run(["git", "-C", run_info.package_data_path("scorelift"), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    if head:  # run from a checkout (the suite is)
        assert run_info.git_commit().split("+")[0] == head


def test_a_tree_without_git_gives_the_recorded_commit(monkeypatch, tmp_path):
    monkeypatch.setattr(run_info, "package_data_path", lambda name: str(tmp_path))  # a folder outside any checkout
    monkeypatch.delenv("SCORELIFT_GIT_COMMIT", raising=False)
    assert run_info.git_commit() is None
    monkeypatch.setenv("SCORELIFT_GIT_COMMIT", "0123abcd")
    assert run_info.git_commit() == "0123abcd"
