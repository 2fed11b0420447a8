package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The tests run against a real cachet server (the repo's .venv) in front of a real
// redis-server, both started here on free loopback ports and stopped at the end.

var serverAddr string

// redisAddr is the redis-server behind it (tests that break its connections use it).
var redisAddr string

func TestMain(m *testing.M) {
	os.Exit(runWithServer(m))
}

func runWithServer(m *testing.M) int {
	server, err := startTestServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer server.stop()
	serverAddr, redisAddr = server.addr, server.redisAddr
	return m.Run()
}

// testServer is a redis-server and a cachet server in front of it, on free ports.
type testServer struct {
	addr, redisAddr string
	logs            string
	redis, server   *exec.Cmd
	// What starts the cachet server again on the same address (restartServer).
	python, healthAddr string
	env                []string
}

// startTestServer starts both, the server with extraEnv ("NAME=value") added to its
// environment, and waits until the server reports SERVING.
func startTestServer(extraEnv ...string) (*testServer, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	logs, err := os.MkdirTemp("", "cachet-go-client-")
	if err != nil {
		return nil, err
	}
	s := &testServer{logs: logs}
	redisPort := freePort()
	s.redis = exec.Command("redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(redisPort),
		"--save", "", "--appendonly", "no", "--dir", logs)
	if err := start(s.redis, filepath.Join(logs, "redis.log")); err != nil {
		s.stop()
		return nil, fmt.Errorf("redis-server: %w", err)
	}
	s.redisAddr = fmt.Sprintf("127.0.0.1:%d", redisPort)
	redisAddr := s.redisAddr
	if err := waitFor(10*time.Second, func() error {
		conn, err := net.Dial("tcp", redisAddr)
		if err == nil {
			conn.Close()
		}
		return err
	}); err != nil {
		s.stop()
		return nil, fmt.Errorf("redis-server did not listen: %w", err)
	}

	s.addr = fmt.Sprintf("127.0.0.1:%d", freePort())
	// Health on a plaintext port of its own, so readiness is checked alike with TLS on.
	s.healthAddr = fmt.Sprintf("127.0.0.1:%d", freePort())
	s.python = filepath.Join(root, ".venv", "bin", "python")
	s.env = append(os.Environ(), "CACHET_REDIS_URL=redis://"+redisAddr, "CACHET_LISTEN="+s.addr,
		"CACHET_HEALTH_LISTEN="+s.healthAddr,
		"CACHET_METRICS__LISTEN=", // no metrics port: several test servers run at once
		"CACHET_AUTH__MODE=off")   // tests that need auth set it in extraEnv
	s.env = append(s.env, extraEnv...)
	if err := s.startServer(); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// startServer starts the cachet server process and waits until it is SERVING.
func (s *testServer) startServer() error {
	s.server = exec.Command(s.python, "-m", "cachet_server")
	s.server.Env = s.env
	serverLog := filepath.Join(s.logs, "server.log")
	if err := start(s.server, serverLog); err != nil {
		return fmt.Errorf("cachet server: %w", err)
	}
	if err := waitServing(s.healthAddr, 30*time.Second); err != nil {
		log, _ := os.ReadFile(serverLog)
		return fmt.Errorf("cachet server not serving: %v\n%s", err, log)
	}
	return nil
}

// killServer kills the cachet server process at once (no drain), as a crash would.
func (s *testServer) killServer() {
	_ = s.server.Process.Kill()
	_ = s.server.Wait()
	s.server = nil
}

// restartServer starts the cachet server again on the same address.
func (s *testServer) restartServer() error { return s.startServer() }

// freezeServer stops the cachet server process (SIGSTOP) until thawServer: the kernel
// still takes its connections and requests, which it does not answer meanwhile.
func (s *testServer) freezeServer() { _ = s.server.Process.Signal(syscall.SIGSTOP) }

func (s *testServer) thawServer() { _ = s.server.Process.Signal(syscall.SIGCONT) }

// stopRedis stops the redis-server only: the cachet server then answers UNAVAILABLE.
func (s *testServer) stopRedis() {
	if s.redis != nil && s.redis.Process != nil {
		stop(s.redis)
		s.redis = nil
	}
}

func (s *testServer) stop() {
	if s.server != nil && s.server.Process != nil {
		s.thawServer() // a frozen process does not act on SIGTERM
		stop(s.server)
	}
	s.stopRedis()
	_ = os.RemoveAll(s.logs)
}

// repoRoot is the nearest parent directory holding the Python server.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "server", "cachet_server")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cachet repository root not found above the working directory")
		}
		dir = parent
	}
}

func freePort() int {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port
}

func start(cmd *exec.Cmd, logPath string) error {
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = dieWithParent()
	return cmd.Start()
}

// stop asks the process to exit (cachet drains on SIGTERM) and kills it if it lingers.
func stop(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func waitFor(limit time.Duration, probe func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := probe()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitServing polls the standard gRPC health service until the server reports SERVING.
func waitServing(addr string, limit time.Duration) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	return waitFor(limit, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		reply, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if reply.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("health is %s", reply.GetStatus())
		}
		return nil
	})
}
