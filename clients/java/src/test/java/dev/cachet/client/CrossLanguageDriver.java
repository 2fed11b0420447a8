package dev.cachet.client;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.io.PrintStream;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;

/**
 * The Java side of tests/test_cross_language.py: one call per run through the wrapper, its answer
 * printed as one JSON line per step.
 *
 * <pre>
 * java -cp ... dev.cachet.client.CrossLanguageDriver &lt;host:port&gt; &lt;namespace&gt; set key=K value=V [ttl_s=60]
 * java -cp ... dev.cachet.client.CrossLanguageDriver &lt;host:port&gt; &lt;namespace&gt; acquire name=N [ttl_s=30] [wait_s=25]
 * </pre>
 */
public final class CrossLanguageDriver {
  private CrossLanguageDriver() {}

  public static void main(String[] args) {
    PrintStream out = new PrintStream(System.out, true, UTF_8);
    if (args.length < 3) {
      System.err.println(
          "usage: CrossLanguageDriver <host:port> <namespace> set|acquire [name=value ...]");
      System.exit(2);
    }
    Map<String, String> params = new HashMap<>();
    for (int i = 3; i < args.length; i++) {
      String[] pair = args[i].split("=", 2);
      params.put(pair[0], pair.length == 2 ? pair[1] : "");
    }
    try (CachetClient client =
        CachetClient.builder()
            .target(args[0])
            .namespace(args[1])
            .defaultDeadline(Duration.ofSeconds(20))
            .build()) {
      switch (args[2]) {
        case "set" -> {
          long version =
              client
                  .cache()
                  .set(
                      required(params, "key"),
                      required(params, "value").getBytes(UTF_8),
                      SetOptions.ttl(
                          Duration.ofSeconds(Long.parseLong(params.getOrDefault("ttl_s", "60")))));
          out.println("{\"version\": \"" + Long.toUnsignedString(version) + "\"}");
        }
        case "acquire" -> {
          String name = required(params, "name");
          out.println("{\"acquiring\": " + quote(name) + "}");
          Lock lock =
              client
                  .locks()
                  .acquire(
                      name,
                      Duration.ofSeconds(Long.parseLong(params.getOrDefault("ttl_s", "30"))),
                      Duration.ofSeconds(Long.parseLong(params.getOrDefault("wait_s", "25"))));
          out.println(
              "{\"fencing_token\": \""
                  + Long.toUnsignedString(lock.fencingToken())
                  + "\", \"waited_ms\": "
                  + lock.waited().toMillis()
                  + "}");
          client.locks().release(lock);
        }
        default -> throw new IllegalArgumentException("unknown operation " + args[2]);
      }
    } catch (CachetException failed) {
      System.err.println(
          failed.getClass().getSimpleName() + " " + failed.reason() + ": " + failed.getMessage());
      System.exit(1);
    }
  }

  private static String required(Map<String, String> params, String name) {
    String value = params.get(name);
    if (value == null) {
      throw new IllegalArgumentException("missing " + name + "=...");
    }
    return value;
  }

  /** A JSON string literal (the names the test passes are plain text). */
  private static String quote(String text) {
    StringBuilder json = new StringBuilder("\"");
    for (char c : text.toCharArray()) {
      switch (c) {
        case '"' -> json.append("\\\"");
        case '\\' -> json.append("\\\\");
        default -> {
          if (c < 0x20) {
            json.append(String.format("\\u%04x", (int) c));
          } else {
            json.append(c);
          }
        }
      }
    }
    return json.append('"').toString();
  }
}
