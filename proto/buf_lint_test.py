"""The contracts pass `buf lint` with the rules in proto/buf.yaml (STANDARD + COMMENTS)."""

from tools.buf import buf_tool


def test_contracts_pass_buf_lint():
    proc = buf_tool.run_buf(["lint", buf_tool.MODULE_DIR])
    assert proc.returncode == 0, (
        f"buf lint found problems (rules: proto/buf.yaml; style: proto/README.md):\n"
        f"{proc.stdout}{proc.stderr}")
