package dev.cachet.client;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.extension.BeforeAllCallback;
import org.junit.jupiter.api.extension.ExtensionContext;

/**
 * A real cachet server (the repository's {@code .venv/bin/cachet-server}) in front of a real
 * {@code redis-server}, both on free loopback ports, started once for the whole test run and
 * stopped when it ends. Auth is off ({@code CACHET_AUTH__MODE=off}), as in the other clients'
 * tests.
 */
public final class LiveServer implements BeforeAllCallback {
  private static volatile Processes running;

  /** The server's address, {@code 127.0.0.1:<port>}. */
  public static String target() {
    if (running == null) {
      throw new IllegalStateException("annotate the test class with @ExtendWith(LiveServer.class)");
    }
    return running.target;
  }

  /** A client of the live server in {@code namespace}. */
  public static CachetClient client(String namespace) {
    return CachetClient.builder().target(target()).namespace(namespace).build();
  }

  @Override
  public void beforeAll(ExtensionContext context) throws Exception {
    synchronized (LiveServer.class) {
      if (running == null) {
        Processes started = Processes.start();
        // Closed by JUnit when the whole run ends, after every test class that used it.
        context.getRoot().getStore(ExtensionContext.Namespace.GLOBAL).put(LiveServer.class, started);
        running = started;
      }
    }
  }

  static Path repositoryRoot() {
    String configured = System.getProperty("cachet.root");
    Path start = Paths.get(configured != null ? configured : System.getProperty("user.dir")).toAbsolutePath();
    for (Path dir = start.normalize(); dir != null; dir = dir.getParent()) {
      if (Files.isDirectory(dir.resolve("server/cachet_server"))) {
        return dir;
      }
    }
    throw new IllegalStateException("no cachet repository (server/cachet_server) above " + start);
  }

  static int freePort() throws IOException {
    try (ServerSocket socket = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      return socket.getLocalPort();
    }
  }

  private static final class Processes implements AutoCloseable {
    final String target;
    private final Process redis;
    private final Process server;
    private final Path logs;

    private Processes(String target, Process redis, Process server, Path logs) {
      this.target = target;
      this.redis = redis;
      this.server = server;
      this.logs = logs;
    }

    static Processes start() throws Exception {
      Path root = repositoryRoot();
      Path logs = Files.createTempDirectory("cachet-java-client-");
      int redisPort = freePort();
      Process redis =
          launch(
              List.of(
                  "redis-server", "--bind", "127.0.0.1", "--port", Integer.toString(redisPort),
                  "--save", "", "--appendonly", "no", "--dir", logs.toString()),
              Map.of(),
              logs.resolve("redis.log"));
      Process server = null;
      try {
        waitFor(Duration.ofSeconds(10), "redis-server to listen", () -> listening(redisPort));
        String target = "127.0.0.1:" + freePort();
        Path executable = root.resolve(".venv/bin/cachet-server");
        if (!Files.isExecutable(executable)) {
          throw new IllegalStateException(executable + " is missing: run `make setup` first");
        }
        server =
            launch(
                List.of(executable.toString()),
                Map.of(
                    "CACHET_REDIS_URL", "redis://127.0.0.1:" + redisPort,
                    "CACHET_LISTEN", target,
                    "CACHET_AUTH__MODE", "off",
                    "CACHET_HEALTH_INTERVAL", "PT0.1S"),
                logs.resolve("server.log"));
        Processes processes = new Processes(target, redis, server, logs);
        processes.waitServing();
        return processes;
      } catch (Exception | Error failed) {
        stop(server);
        stop(redis);
        throw failed;
      }
    }

    /** Serving means a cache call answers (Redis reachable through the server). */
    private void waitServing() throws Exception {
      try (CachetClient probe =
          CachetClient.builder().target(target).namespace("probe").defaultDeadline(Duration.ofSeconds(1)).build()) {
        waitFor(
            Duration.ofSeconds(30),
            "cachet-server to serve",
            () -> {
              if (!server.isAlive()) {
                throw new IllegalStateException(
                    "cachet-server exited " + server.exitValue() + ":\n" + Files.readString(logs.resolve("server.log")));
              }
              try {
                probe.cache().get("probe");
                return true;
              } catch (CachetException notYet) {
                return false;
              }
            });
      }
    }

    private static Process launch(List<String> command, Map<String, String> env, Path log) throws IOException {
      ProcessBuilder builder = new ProcessBuilder(command).redirectErrorStream(true).redirectOutput(log.toFile());
      builder.redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")));
      builder.environment().putAll(env);
      return builder.start();
    }

    private static boolean listening(int port) {
      try (Socket socket = new Socket()) {
        socket.connect(new InetSocketAddress(InetAddress.getLoopbackAddress(), port), 200);
        return true;
      } catch (IOException notYet) {
        return false;
      }
    }

    interface Probe {
      boolean ready() throws Exception;
    }

    private static void waitFor(Duration limit, String what, Probe probe) throws Exception {
      long deadline = System.nanoTime() + limit.toNanos();
      while (!probe.ready()) {
        if (System.nanoTime() > deadline) {
          throw new IllegalStateException("timed out after " + limit + " waiting for " + what);
        }
        Thread.sleep(100);
      }
    }

    /** SIGTERM (cachet drains on it), then SIGKILL if it lingers. */
    private static void stop(Process process) {
      if (process == null) {
        return;
      }
      process.destroy();
      try {
        if (!process.waitFor(15, TimeUnit.SECONDS)) {
          process.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
        }
      } catch (InterruptedException interrupted) {
        process.destroyForcibly();
        Thread.currentThread().interrupt();
      }
    }

    @Override
    public void close() throws IOException {
      stop(server);
      stop(redis);
      try (var files = Files.walk(logs)) {
        files.sorted(java.util.Comparator.reverseOrder()).forEach(path -> path.toFile().delete());
      }
    }
  }
}
