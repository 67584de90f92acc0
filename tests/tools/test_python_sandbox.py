"""Escape attempts against the Python sandbox. Each must fail inside and leave the host as it was.

Every attempt runs real code in a real bubblewrap sandbox and asserts on what the kernel
answered, so a missing layer turns a test red rather than being papered over.
"""

from __future__ import annotations

import os
import socket
import textwrap
import uuid
from pathlib import Path

import pytest

from tools.python import PythonSandbox, UnsafePathError

pytestmark = pytest.mark.sandbox


def run_ok(sandbox: PythonSandbox, code: str, timeout: float = 10) -> str:
    """Run a cell that must complete, and return its printed output."""
    result = sandbox.run(textwrap.dedent(code), timeout=timeout)
    assert result.status == "ok", result.to_text()
    return result.stdout


# -- the notebook behaviour ------------------------------------------------------------------


def test_state_persists_and_last_expression_is_returned(shared_sandbox: PythonSandbox) -> None:
    assert shared_sandbox.run("y = 41").status == "ok"
    assert shared_sandbox.run("y + 1").result == "42"
    assert shared_sandbox.run("import math\nmath.factorial(5)").result == "120"


def test_output_is_captured_at_the_fd_level(shared_sandbox: PythonSandbox) -> None:
    result = shared_sandbox.run(
        "import os, sys, ctypes\nprint('py-out')\nprint('py-err', file=sys.stderr)\n"
        "os.write(1, b'fd-out\\n')\nlibc = ctypes.CDLL(None)\nlibc.write(2, b'c-err\\n', 6)\n"
    )
    assert result.status == "ok"
    assert result.stdout == "py-out\nfd-out\n"
    assert result.stderr == "py-err\nc-err\n"


def test_errors_return_a_traceback_of_the_cell_only(shared_sandbox: PythonSandbox) -> None:
    result = shared_sandbox.run("def f():\n    return 1 / 0\nf()")
    assert result.status == "error"
    assert result.error is not None
    assert "ZeroDivisionError" in result.error and "return 1 / 0" in result.error
    assert "worker.py" not in result.error
    assert shared_sandbox.run("y").result == "41"


def test_oversize_cells_are_refused_without_killing_the_session(
    shared_sandbox: PythonSandbox,
) -> None:
    result = shared_sandbox.run("s = '" + "a" * (600 << 10) + "'")
    assert result.status == "error" and "CodeTooLarge" in (result.error or "")
    assert shared_sandbox.run("x").result == "41"


def test_threads_still_work(shared_sandbox: PythonSandbox) -> None:
    code = """
    import threading
    box = []
    t = threading.Thread(target=lambda: box.append(7)); t.start(); t.join()
    print(box)
    """
    assert run_ok(shared_sandbox, code) == "[7]\n"


# -- filesystem ---------------------------------------------------------------------------


def test_writes_outside_the_work_dir_fail(shared_sandbox: PythonSandbox) -> None:
    marker = f"maestro-escape-{uuid.uuid4().hex}"
    code = f"""
    import errno
    for path in ['/usr/{marker}', '/etc/{marker}', '/{marker}', '/sandbox/{marker}',
                 '/dev/shm/{marker}', '/proc/{marker}']:
        try:
            open(path, 'w').write('x')
            print('WROTE', path)
        except OSError as exc:
            print('refused', path, errno.errorcode[exc.errno])
    open('/tmp/{marker}', 'w').write('inside only')
    """
    out = run_ok(shared_sandbox, code)
    assert "WROTE" not in out
    assert out.count("refused") == 6
    for host_path in (f"/usr/{marker}", f"/etc/{marker}", f"/{marker}", f"/tmp/{marker}"):
        assert not os.path.exists(host_path)


def test_host_secrets_and_other_sessions_are_invisible(shared_sandbox: PythonSandbox) -> None:
    secret = f"other-session-{uuid.uuid4().hex}"
    with PythonSandbox() as other:
        other.write_file("secret.txt", secret.encode())
        assert other.run("open('secret.txt').read()").result == repr(secret)
        code = f"""
        import os
        found = []
        for path in ['/etc/shadow', '/root', '/home', '/etc/passwd']:
            try:
                os.listdir(path) if not path.endswith(('shadow', 'passwd')) else open(path).read()
                found.append(path)
            except OSError:
                pass
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                try:
                    os.listdir(f'/proc/{{pid}}/root/workspace')
                    if pid not in ('1', str(os.getpid())):
                        found.append(pid)
                except OSError:
                    pass
        for root, dirs, files in os.walk('/'):
            if root.startswith(('/proc', '/usr', '/dev')):  # host /usr is read-only anyway
                dirs[:] = []
                continue
            for name in files:
                try:
                    if {secret!r} in open(os.path.join(root, name), errors='ignore').read(1 << 20):
                        found.append(os.path.join(root, name))
                except OSError:
                    pass
        print(sorted(os.listdir('/')), found)
        """
        out = run_ok(shared_sandbox, code, timeout=20)
    assert out.endswith(" []\n"), out
    assert "root" not in out.split("]")[0] and "home" not in out.split("]")[0]


def test_host_does_not_follow_symlinks_when_harvesting(shared_sandbox: PythonSandbox) -> None:
    run_ok(shared_sandbox, """
    import os
    os.symlink('/etc/passwd', 'passwd_link')
    os.symlink('/etc', 'etc_link')
    os.mkfifo('blocking_fifo')
    os.makedirs('out', exist_ok=True)
    open('out/result.csv', 'w').write('a,b\\n1,2\\n')
    """)
    kinds = {f.path: f.kind for f in shared_sandbox.list_files()}
    assert kinds["passwd_link"] == "symlink" and kinds["etc_link"] == "symlink"
    assert kinds["blocking_fifo"] == "other"
    assert shared_sandbox.read_file("out/result.csv") == b"a,b\n1,2\n"
    for bad in ("passwd_link", "etc_link/passwd", "blocking_fifo", "../../etc/passwd",
                "/etc/passwd"):
        with pytest.raises(UnsafePathError):
            shared_sandbox.read_file(bad)
    with pytest.raises(UnsafePathError):
        shared_sandbox.write_file("etc_link/owned", b"x")
    assert not os.path.exists("/etc/owned")


def test_filling_the_disk_and_tmp_hits_the_caps(fresh_sandbox: PythonSandbox) -> None:
    code = """
    import errno
    def fill(directory):
        written = 0
        try:
            for i in range(1000):
                with open(f'{directory}/fill{i}', 'wb') as f:
                    for _ in range(64):
                        f.write(b'x' * (1 << 20)); written += 1 << 20
        except OSError as exc:
            return errno.errorcode[exc.errno], written >> 20
    print([fill('/workspace'), fill('/tmp')])
    """
    out = run_ok(fresh_sandbox, code, timeout=30)
    # 4 MiB per file (EFBIG), then the 8 MiB work dir and 4 MiB /tmp fill up (ENOSPC).
    assert out.count("EFBIG") + out.count("ENOSPC") == 2, out
    (ws_err, ws_mib), (tmp_err, tmp_mib) = eval(out)  # our own printed tuples
    assert {ws_err, tmp_err} <= {"EFBIG", "ENOSPC"}
    assert ws_mib <= 8 and tmp_mib <= 4
    assert fresh_sandbox.run("1 + 1").result == "2"


# -- processes and the kernel ----------------------------------------------------------------


def test_no_new_processes(shared_sandbox: PythonSandbox) -> None:
    code = """
    import ctypes, os, subprocess
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    outcomes = {}
    def attempt(name, fn):
        try:
            outcomes[name] = repr(fn())
        except OSError as exc:
            outcomes[name] = 'refused ' + type(exc).__name__
    attempt('subprocess', lambda: subprocess.run(['/usr/bin/id']).returncode)
    attempt('fork', os.fork)
    attempt('posix_spawn', lambda: os.posix_spawn('/usr/bin/id', ['id'], {})
    )
    attempt('execv', lambda: os.execv('/usr/bin/id', ['id']))
    outcomes['os.system'] = os.system('id > /workspace/pwned')
    outcomes['libc.system'] = libc.system(b'id > /workspace/pwned2')
    def raw(nr, *args):
        r = libc.syscall(nr, *args)
        if r == 0:
            os._exit(0)  # we are a child that should never exist
        return (r, ctypes.get_errno())
    outcomes['raw fork'] = raw(57)
    outcomes['raw clone'] = raw(56, 17, 0, 0, 0, 0)  # SIGCHLD, no CLONE_THREAD
    outcomes['raw vfork'] = raw(58)
    print(outcomes)
    print(sorted(os.listdir('/proc')))
    """
    out = run_ok(shared_sandbox, code)
    outcomes = eval(out.splitlines()[0])
    for name in ("subprocess", "fork", "posix_spawn", "execv"):
        assert outcomes[name].startswith("refused"), (name, outcomes)
    assert outcomes["os.system"] != 0 and outcomes["libc.system"] != 0
    for name in ("raw fork", "raw clone", "raw vfork"):
        assert outcomes[name][0] == -1, (name, outcomes)
    assert not any(f.path.startswith("pwned") for f in shared_sandbox.list_files())
    pids = [p for p in eval(out.splitlines()[1]) if p.isdigit()]
    assert len(pids) <= 2  # bwrap's init and the worker: nothing from the host


def test_x32_syscalls_are_refused(fresh_sandbox: PythonSandbox) -> None:
    """The x32 ABI could dodge a filter written for x86-64 numbers; it must not."""
    result = fresh_sandbox.run(
        "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.syscall.restype = ctypes.c_long\n"
        "libc.syscall(0x40000000 | 57)"
    )
    # Either the kernel has no x32 (-1) or libseccomp's bad-arch action kills the worker.
    assert result.result == "-1" or (result.status == "killed" and "SIGSYS" in (result.error or ""))
    assert fresh_sandbox.run("6 * 7").result == "42"


def test_kernel_surface_is_closed(shared_sandbox: PythonSandbox) -> None:
    code = """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def call(fn, *args):
        r = fn(*args)
        return (r, os.strerror(ctypes.get_errno()) if r == -1 else '')
    res = {
        'ptrace': call(libc.ptrace, 0, 0, 0, 0),                      # PTRACE_TRACEME
        'unshare_user': call(libc.unshare, 0x10000000),
        'unshare_mount': call(libc.unshare, 0x00020000),
        'remount_rw': call(libc.mount, None, b'/', None, 0x20 | 0x1000, None),
        'remount_usr': call(libc.mount, None, b'/usr', None, 0x20 | 0x1000, None),
        'bpf': call(libc.syscall, 321, 0, 0, 0),
        'io_uring': call(libc.syscall, 425, 8, 0),
        'kill_init': call(libc.kill, 1, 9),
    }
    status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines()
                  if ':\\t' in l)
    print(res)
    print({k: status[k].strip() for k in ('CapEff', 'CapPrm', 'Seccomp', 'NoNewPrivs', 'Uid')})
    """
    lines = run_ok(shared_sandbox, code).splitlines()
    results, status = eval(lines[0]), eval(lines[1])
    for name, (rc, _err) in results.items():
        assert rc == -1, (name, results)
    assert status["CapEff"] == status["CapPrm"] == "0000000000000000"
    assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
    assert status["Uid"].split()[0] == "65534"
    assert shared_sandbox.run("2 + 2").result == "4"


def test_no_network(shared_sandbox: PythonSandbox) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = f"""
    import socket
    res = {{}}
    for name, fn in [
        ('tcp_external', lambda: socket.create_connection(('1.1.1.1', 80), timeout=2)),
        ('tcp_host_loopback', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=2)),
        ('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
        ('ipv6', lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM)),
        ('raw_netlink', lambda: socket.socket(16, socket.SOCK_RAW, 0)),
        ('dns', lambda: socket.getaddrinfo('example.com', 80)),
    ]:
        try:
            fn(); res[name] = 'CONNECTED'
        except OSError as exc:
            res[name] = type(exc).__name__
    a, b = socket.socketpair(); a.sendall(b'ok'); res['unix_pair'] = b.recv(2).decode()
    print(res)
    """
    try:
        results = eval(run_ok(shared_sandbox, code))
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert "CONNECTED" not in results.values(), results
    assert results["unix_pair"] == "ok"


def test_host_abstract_unix_sockets_are_unreachable(shared_sandbox: PythonSandbox) -> None:
    """Abstract Unix sockets live in the network namespace (X11, D-Bus use them)."""
    name = f"maestro-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(1)
    listener.setblocking(False)
    try:
        code = f"""
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect('\\0{name}'); print('CONNECTED')
        except OSError as exc:
            print(type(exc).__name__)
        """
        assert "CONNECTED" not in run_ok(shared_sandbox, code)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_rlimits_cannot_be_raised(shared_sandbox: PythonSandbox) -> None:
    code = """
    import resource
    res = {}
    for name in ('RLIMIT_AS', 'RLIMIT_NOFILE', 'RLIMIT_CPU', 'RLIMIT_FSIZE'):
        limit = getattr(resource, name)
        soft, hard = resource.getrlimit(limit)
        try:
            resource.setrlimit(limit, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            res[name] = 'RAISED'
        except (ValueError, OSError) as exc:
            res[name] = type(exc).__name__
    print(res)
    """
    results = eval(run_ok(shared_sandbox, code))
    assert "RAISED" not in results.values(), results


def test_environment_does_not_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAESTRO_TEST_SECRET", "hunter2")
    with PythonSandbox() as sandbox:
        out = run_ok(sandbox, """
        import os
        print(sorted(os.environ))
        for p in ('/proc/1/environ', '/proc/self/environ'):
            try:
                print('hunter2' in open(p, 'rb').read().decode(errors='ignore'))
            except OSError:
                print(False)
        """)
    lines = out.splitlines()
    assert eval(lines[0]) == ["HOME", "LANG", "PATH"]
    assert lines[1:] == ["False", "False"]


# -- resources: the session survives what it can, and is replaced when it cannot -------------


def test_big_allocation_fails_and_session_survives(shared_sandbox: PythonSandbox) -> None:
    result = shared_sandbox.run("big = bytearray(2 << 30)")
    assert result.status == "error" and "MemoryError" in (result.error or "")
    assert shared_sandbox.run("x + 1").result == "42"


def test_infinite_loop_times_out_and_session_survives(shared_sandbox: PythonSandbox) -> None:
    result = shared_sandbox.run("z = 5\nwhile True: pass", timeout=0.5)
    assert result.status == "timeout" and "CellTimeout" in (result.error or "")
    assert shared_sandbox.run("x + z").result == "46"


def test_ignored_alarm_is_hard_killed_and_a_fresh_session_starts(
    fresh_sandbox: PythonSandbox,
) -> None:
    fresh_sandbox.run("kept = 1")
    fresh_sandbox.write_file("data.txt", b"survives")
    old_pid = fresh_sandbox._proc.pid if fresh_sandbox._proc else None
    result = fresh_sandbox.run(
        "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass",
        timeout=0.5,
    )
    assert result.status == "killed"
    assert "fresh session" in (result.error or "") and "lost" in (result.error or "")
    assert old_pid is not None and not Path(f"/proc/{old_pid}").exists()
    after = fresh_sandbox.run("kept")
    assert after.status == "error" and "NameError" in (after.error or "")
    assert fresh_sandbox.run("open('data.txt').read()").result == "'survives'"
    assert fresh_sandbox.restarts == 1


def test_cpu_budget_exhaustion_restarts_the_session() -> None:
    from tools.python import SandboxLimits

    with PythonSandbox(limits=SandboxLimits(cpu_seconds=1), kill_grace=1.0) as sandbox:
        result = sandbox.run("while True: pass", timeout=8)
        assert result.status == "killed" and "SIGXCPU" in (result.error or ""), result
        assert sandbox.run("1 + 1").result == "2"


def test_many_open_files_hit_the_limit(shared_sandbox: PythonSandbox) -> None:
    code = """
    handles = []
    try:
        for i in range(1000):
            handles.append(open('/dev/null'))
    except OSError as exc:
        print(len(handles), exc.strerror)
    finally:
        for h in handles:
            h.close()
    """
    count, _, reason = run_ok(shared_sandbox, code).strip().partition(" ")
    assert int(count) < 256 and "Too many open files" in reason
    assert shared_sandbox.run("x").result == "41"


def test_deep_recursion_does_not_take_the_host_down(fresh_sandbox: PythonSandbox) -> None:
    result = fresh_sandbox.run(
        "import sys\nsys.setrecursionlimit(10**6)\ndef f(n): return f(n + 1)\nf(0)", timeout=1
    )
    assert result.status in ("error", "timeout", "killed")
    assert fresh_sandbox.run("1").result == "1"


def test_a_dropped_session_does_not_outlive_its_object() -> None:
    import gc

    sandbox = PythonSandbox()
    sandbox.start()
    proc = sandbox._proc
    assert proc is not None and proc.poll() is None
    del sandbox
    gc.collect()
    assert proc.poll() is not None  # killed by the finalizer, and reaped


def test_data_analysis_with_pandas_when_installed(fresh_sandbox: PythonSandbox) -> None:
    """The analyst's path: upload a CSV, analyse it with pandas, harvest the output file.

    Needs Debian's python3-pandas (the sandbox uses /usr/bin/python3); numpy's BLAS is found
    through /etc/alternatives, which the sandbox binds read-only for that reason.
    """
    probe = fresh_sandbox.run("import importlib.util\nimportlib.util.find_spec('pandas') is None")
    if probe.result == "True":
        pytest.skip("python3-pandas is not installed for /usr/bin/python3")
    fresh_sandbox.write_file("in/sales.csv", b"region,amount\nnorth,10\nsouth,32\nnorth,5\n")
    result = fresh_sandbox.run(
        "import pandas as pd\ndf = pd.read_csv('in/sales.csv')\n"
        "totals = df.groupby('region').amount.sum()\ntotals.to_csv('totals.csv')\n"
        "totals.to_dict()", timeout=60)
    assert result.status == "ok", result.to_text()
    assert result.result == "{'north': 15, 'south': 32}"
    assert fresh_sandbox.read_file("totals.csv") == b"region,amount\nnorth,15\nsouth,32\n"
