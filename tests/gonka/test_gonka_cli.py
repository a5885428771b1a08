"""The ``address`` and ``discover`` subcommands (in-process and as a real subprocess)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from _gonka_support import REQUESTER_KEY

from gonka_mux.gonka.cli import register
from gonka_mux.gonka.keys import PrivateKey

DRIVER = (
    "import argparse, sys\n"
    "from gonka_mux.gonka.cli import register\n"
    "parser = argparse.ArgumentParser(prog='gonka-mux')\n"
    "register(parser.add_subparsers(dest='command', required=True))\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gonka-mux")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_address_from_env(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("GONKA_PRIVATE_KEY", REQUESTER_KEY)
    assert run(["address"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == PrivateKey.from_hex(REQUESTER_KEY).address
    assert REQUESTER_KEY not in out


def test_address_from_file_and_argument_as_json(tmp_path, capsys, vector) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(vector["developer_private_key_hex"])
    key_file.chmod(0o600)
    assert run(["address", "--key-file", str(key_file), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["address"] == vector["developer_address"]
    assert document["public_key_base64"] == vector["developer_pubkey_base64_as_on_chain"]
    assert run(["address", "--private-key", vector["transfer_agent_private_key_hex"]]) == 0
    assert capsys.readouterr().out.strip() == vector["transfer_agent_address"]


def test_address_errors_exit_2_without_the_key(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("GONKA_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("GONKA_PRIVATE_KEY_FILE", raising=False)
    assert run(["address"]) == 2
    assert "GONKA_PRIVATE_KEY" in capsys.readouterr().err
    bad = REQUESTER_KEY[:-1] + "q"
    assert run(["address", "--private-key", bad]) == 2
    captured = capsys.readouterr()
    assert "non-hexadecimal" in captured.err
    assert bad[:16] not in captured.err + captured.out


def test_discover_table(net, capsys) -> None:
    net.exclude(net.participants[0].address, "downtime")
    assert run(["discover", "--source-url", net.source_url]) == 0
    out = capsys.readouterr().out
    assert "epoch 10, phase Inference (safe for inference)" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ADDRESS"))
    rows = lines[header + 1 : header + 3]
    # heaviest first, excluded one absent
    assert rows[0].split()[:2] == [net.participants[2].address, "300"]
    assert rows[1].split()[:2] == [net.participants[1].address, "200"]
    assert "model Qwen/Fake-7B: 2 participants, total weight 500" in out
    assert f"excluded {net.participants[0].address}: downtime" in out
    assert "TA allowlist: unknown" in out and "classic signed API: served" in out
    net.retire_classic_api()
    assert run(["discover", "--source-url", net.source_url]) == 0
    assert "classic signed API: RETIRED" in capsys.readouterr().out


def test_discover_json_with_failover_and_env(net, capsys, monkeypatch) -> None:
    monkeypatch.setenv("GONKA_SOURCE_URL", f"http://127.0.0.1:9,{net.source_url}")
    assert run(["discover", "--json", "--verify-proofs", "--timeout", "5"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["epoch_id"] == 10
    assert document["source_url"] == net.source_url
    assert document["proof_verified"] is True
    assert [p["address"] for p in document["participants"]] == [p.address for p in net.participants]
    assert document["models"] == {"Qwen/Fake-7B": [p.address for p in net.participants]}
    assert document["switch_height"] == net.next_switch_height()
    assert document["allowlist_known"] is False and document["classic_api_retired"] is False


def test_discover_errors(capsys, monkeypatch) -> None:
    monkeypatch.delenv("GONKA_SOURCE_URL", raising=False)
    assert run(["discover"]) == 2
    assert "--source-url" in capsys.readouterr().err
    assert run(["discover", "--source-url", "http://127.0.0.1:9", "--timeout", "2"]) == 2
    assert "discovery from http://127.0.0.1:9" in capsys.readouterr().err


def test_as_a_real_process(net, vector) -> None:
    env = {"PATH": "/usr/bin:/bin", "GONKA_PRIVATE_KEY": vector["developer_private_key_hex"]}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "address"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == vector["developer_address"]
    assert vector["developer_private_key_hex"] not in done.stdout + done.stderr
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "discover", "--source-url", net.source_url, "--json"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["participants"]) == 3
