// SPDX-License-Identifier: LGPL-2.1-or-later

// containerd's own snapshotter test suite (snapshots/testsuite) against reflayerd's containerd
// door: each case gets a fresh reflayerd serving containerd.services.snapshots.v1.Snapshots on
// a unix socket, and talks to it through containerd's gRPC proxy snapshotter, the way
// containerd talks to a proxy plugin.
//
// TestNative serves containerd's native snapshotter the same way (gRPC over a unix socket, in
// this process) so that a failure of TestReflayer is known to be reflayerd's, not the
// harness's.
//
// Built by the Makefile against Debian's containerd sources (GOPATH mode, offline); run by
// tests/integration/containerd-suite.c as root, with TMPDIR on a reflink XFS and -test.root.
package ctrsuite

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/pkg/testutil"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/native"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

// How long a server has to accept its first connection. The daemon opens its store and
// installs its sandbox first; seconds at most, but the machine may be busy with other tests.
const readyTimeout = 20 * time.Second

// How long a SIGTERMed daemon has to exit before it is killed (and the case fails).
const stopTimeout = 10 * time.Second

func TestReflayer(t *testing.T) {
	runReflayer(t)
}

// The same cases against reflayerd --ephemeral: every Prepare and View unflushed, under
// ephemeral/BOOT/; Commit moves a snapshot into snapshots/ and makes it durable.
func TestReflayerEphemeral(t *testing.T) {
	runReflayer(t, "--ephemeral")
}

func runReflayer(t *testing.T, extra ...string) {
	testutil.RequiresRoot(t)
	daemon := os.Getenv("RL_DAEMON")
	if daemon == "" {
		t.Fatal("RL_DAEMON must name the built reflayerd (tests/run-unit sets it)")
	}
	if _, err := os.Stat(daemon); err != nil {
		t.Fatalf("RL_DAEMON: %v", err)
	}
	testsuite.SnapshotterSuite(t, "reflayer", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return startReflayerd(ctx, daemon, root, extra)
	})
}

func TestNative(t *testing.T) {
	testutil.RequiresRoot(t)
	testsuite.SnapshotterSuite(t, "native", startNative)
}

// dial waits until the unix socket at path accepts a connection (or alive reports the server
// gone, or readyTimeout passes), then returns a gRPC connection to it.
func dial(ctx context.Context, path string, alive func() error) (*grpc.ClientConn, error) {
	deadline := time.Now().Add(readyTimeout)
	for {
		if err := alive(); err != nil {
			return nil, err
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s accepted no connection within %v: %w", path, readyTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return grpc.DialContext(ctx, path, grpc.WithInsecure(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}))
}

// A reflayerd of one case.
type daemonProc struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer  // its stdout and stderr; read only once done is closed
	done   chan struct{} // closed when Wait returned
	err    error         // Wait's result, valid once done is closed
}

func (p *daemonProc) describe() string {
	return fmt.Sprintf("%v; its stderr:\n%s", p.err, strings.TrimRight(p.stderr.String(), "\n"))
}

// stop SIGTERMs the daemon and waits for it; killed after stopTimeout. An exit other than 0
// is an error carrying the daemon's stderr.
func (p *daemonProc) stop() error {
	select {
	case <-p.done:
		return fmt.Errorf("reflayerd died during the test: %s", p.describe())
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("reflayerd did not exit within %v of SIGTERM: %s", stopTimeout, p.describe())
	}
	if p.err != nil {
		return fmt.Errorf("reflayerd exited badly after SIGTERM: %s", p.describe())
	}
	return nil
}

func startReflayerd(ctx context.Context, daemon, root string, extra []string) (snapshots.Snapshotter, func() error, error) {
	sock := filepath.Join(root, "containerd.sock")
	p := &daemonProc{done: make(chan struct{})}
	args := append([]string{"--root", filepath.Join(root, "store"),
		"--socket", filepath.Join(root, "rl.sock"), "--containerd-socket", sock,
		"--log-level", "debug"}, extra...)
	p.cmd = exec.Command(daemon, args...)
	p.cmd.Stdout = &p.stderr
	p.cmd.Stderr = &p.stderr
	// Its own process group: a SIGINT to the test run does not reach it before cleanup does.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", daemon, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	conn, err := dial(ctx, sock, func() error {
		select {
		case <-p.done:
			return fmt.Errorf("reflayerd exited before serving %s: %s", sock, p.describe())
		default:
			return nil
		}
	})
	if err != nil {
		if stopErr := p.stop(); stopErr != nil && !strings.Contains(err.Error(), "exited before") {
			err = fmt.Errorf("%w (and then: %v)", err, stopErr)
		}
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "reflayer")
	return sn, func() error {
		conn.Close()
		return p.stop()
	}, nil
}

func startNative(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	store := filepath.Join(root, "store")
	sock := filepath.Join(root, "containerd.sock")
	backend, err := native.NewSnapshotter(store)
	if err != nil {
		return nil, nil, err
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		backend.Close()
		return nil, nil, err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(backend))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	conn, err := dial(ctx, sock, func() error {
		select {
		case err := <-served:
			return fmt.Errorf("the native gRPC server stopped before serving: %v", err)
		default:
			return nil
		}
	})
	if err != nil {
		srv.Stop()
		backend.Close()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "native")
	return sn, func() error {
		conn.Close()
		srv.Stop()
		return backend.Close()
	}, nil
}
