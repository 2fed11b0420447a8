package dev.cachet.client;

import java.io.File;
import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import org.junit.jupiter.api.extension.BeforeAllCallback;
import org.junit.jupiter.api.extension.ExtensionContext;

/**
 * A real cachet server (the repository's {@code .venv/bin/cachet-server}) in front of a real {@code
 * redis-server}, both on free loopback ports, started once for the whole test run and stopped when
 * it ends. Auth is off ({@code CACHET_AUTH__MODE=off}), as in the other clients' tests; {@link
 * #startServer} starts more servers on the same Redis with settings of their own.
 */
public final class LiveServer implements BeforeAllCallback {
  private static volatile Processes running;

  /** The server's address, {@code 127.0.0.1:<port>}. */
  public static String target() {
    return started().server.target;
  }

  /** A client of the live server in {@code namespace}. */
  public static CachetClient client(String namespace) {
    return CachetClient.builder().target(target()).namespace(namespace).build();
  }

  /**
   * Another cachet-server on the live server's Redis, with {@code settings} (auth, TLS) added to
   * its environment; {@code probe} makes a client able to reach it, asked until a call answers.
   */
  static Server startServer(Map<String, String> settings, Function<String, CachetClient> probe)
      throws Exception {
    Processes processes = started();
    return Server.start(processes.redisUrl, settings, processes.logs, probe);
  }

  @Override
  public void beforeAll(ExtensionContext context) throws Exception {
    synchronized (LiveServer.class) {
      if (running == null) {
        Processes processes = Processes.start();
        // Closed by JUnit when the whole run ends, after every test class that used it.
        context
            .getRoot()
            .getStore(ExtensionContext.Namespace.GLOBAL)
            .put(LiveServer.class, processes);
        running = processes;
      }
    }
  }

  private static Processes started() {
    if (running == null) {
      throw new IllegalStateException("annotate the test class with @ExtendWith(LiveServer.class)");
    }
    return running;
  }

  static Path repositoryRoot() {
    String configured = System.getProperty("cachet.root");
    Path start =
        Paths.get(configured != null ? configured : System.getProperty("user.dir"))
            .toAbsolutePath();
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

  /** A running cachet-server process. */
  static final class Server implements AutoCloseable {
    final String target;
    private final Process process;

    private Server(String target, Process process) {
      this.target = target;
      this.process = process;
    }

    static Server start(
        String redisUrl,
        Map<String, String> settings,
        Path logs,
        Function<String, CachetClient> probe)
        throws Exception {
      Path executable = repositoryRoot().resolve(".venv/bin/cachet-server");
      if (!Files.isExecutable(executable)) {
        throw new IllegalStateException(executable + " is missing: run `make setup` first");
      }
      String target = "127.0.0.1:" + freePort();
      Map<String, String> env = new HashMap<>(settings);
      env.put("CACHET_REDIS_URL", redisUrl);
      env.put("CACHET_LISTEN", target);
      env.putIfAbsent("CACHET_HEALTH_INTERVAL", "PT0.1S");
      // Its own Prometheus port: the default (127.0.0.1:9464) is one per machine.
      env.putIfAbsent("CACHET_METRICS__LISTEN", "127.0.0.1:" + freePort());
      Path log = Files.createTempFile(logs, "server-", ".log");
      Server server = new Server(target, launch(List.of(executable.toString()), env, log));
      try (CachetClient client = probe.apply(target)) {
        waitFor(
            Duration.ofSeconds(30),
            "cachet-server to serve",
            () -> {
              if (!server.process.isAlive()) {
                throw new IllegalStateException(
                    "cachet-server exited "
                        + server.process.exitValue()
                        + ":\n"
                        + Files.readString(log));
              }
              try {
                client.cache().get("probe");
                return true;
              } catch (UnavailableException | DeadlineExceededException notYet) {
                return false;
              }
            });
        return server;
      } catch (Exception | Error failed) {
        server.close();
        throw failed;
      }
    }

    @Override
    public void close() {
      stop(process);
    }
  }

  /** The shared redis-server and the auth-off cachet-server in front of it. */
  private static final class Processes implements AutoCloseable {
    final String redisUrl;
    final Server server;
    final Path logs;
    private final Process redis;

    private Processes(String redisUrl, Process redis, Server server, Path logs) {
      this.redisUrl = redisUrl;
      this.redis = redis;
      this.server = server;
      this.logs = logs;
    }

    static Processes start() throws Exception {
      Path logs = Files.createTempDirectory("cachet-java-client-");
      int port = freePort();
      Process redis =
          launch(
              List.of(
                  "redis-server",
                  "--bind",
                  "127.0.0.1",
                  "--port",
                  Integer.toString(port),
                  "--save",
                  "",
                  "--appendonly",
                  "no",
                  "--dir",
                  logs.toString()),
              Map.of(),
              logs.resolve("redis.log"));
      try {
        waitFor(Duration.ofSeconds(10), "redis-server to listen", () -> listening(port));
        String redisUrl = "redis://127.0.0.1:" + port;
        Server server =
            Server.start(
                redisUrl,
                Map.of("CACHET_AUTH__MODE", "off"),
                logs,
                target ->
                    CachetClient.builder()
                        .target(target)
                        .namespace("probe")
                        .defaultDeadline(Duration.ofSeconds(1))
                        .build());
        return new Processes(redisUrl, redis, server, logs);
      } catch (Exception | Error failed) {
        stop(redis);
        throw failed;
      }
    }

    @Override
    public void close() throws IOException {
      server.close();
      stop(redis);
      try (var files = Files.walk(logs)) {
        files.sorted(Comparator.reverseOrder()).forEach(path -> path.toFile().delete());
      }
    }
  }

  private static Process launch(List<String> command, Map<String, String> env, Path log)
      throws IOException {
    ProcessBuilder builder =
        new ProcessBuilder(command)
            .redirectErrorStream(true)
            .redirectOutput(log.toFile())
            .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")));
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
}
