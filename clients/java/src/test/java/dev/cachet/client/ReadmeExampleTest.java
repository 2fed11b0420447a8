package dev.cachet.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/** The README's example is the code in {@link ReadmeExample}, and it works. */
@ExtendWith(LiveServer.class)
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class ReadmeExampleTest {
  private static final Path JAVA_CLIENT = LiveServer.repositoryRoot().resolve("clients/java");

  /** The example's lines from the source file, without the method's indentation. */
  static String exampleSource() throws IOException {
    List<String> lines =
        Files.readAllLines(
            JAVA_CLIENT.resolve("src/test/java/dev/cachet/client/ReadmeExample.java"));
    int start = indexOf(lines, "// README example: start") + 1;
    int end = indexOf(lines, "// README example: end");
    List<String> example = lines.subList(start, end);
    int indent =
        example.stream()
            .filter(line -> !line.isBlank())
            .mapToInt(ReadmeExampleTest::indentation)
            .min()
            .orElse(0);
    return example.stream()
        .map(line -> line.isBlank() ? "" : line.substring(indent))
        .collect(Collectors.joining("\n"));
  }

  private static int indexOf(List<String> lines, String marker) {
    for (int i = 0; i < lines.size(); i++) {
      if (lines.get(i).strip().equals(marker)) {
        return i;
      }
    }
    throw new AssertionError("marker missing from ReadmeExample.java: " + marker);
  }

  private static int indentation(String line) {
    return line.length() - line.stripLeading().length();
  }

  @Test
  void theReadmeQuotesTheExampleVerbatim() throws IOException {
    String readme = Files.readString(JAVA_CLIENT.resolve("README.md"));
    String example = exampleSource();
    assertTrue(
        readme.contains("```java\n" + example + "\n```"),
        () ->
            "clients/java/README.md must quote ReadmeExample.java's example exactly:\n" + example);
    long lines = Arrays.stream(example.split("\n")).filter(line -> !line.isBlank()).count();
    assertTrue(lines <= 10, () -> "the example has " + lines + " lines, the README promises ten");
  }

  @Test
  void theExampleRunsAgainstALiveServer() {
    try (CachetClient shop = LiveServer.client("shop");
        Subscription orders = shop.events().subscribe(List.of("orders"))) {
      ReadmeExample.run(LiveServer.target());
      assertEquals("bob", shop.cache().get("user:1").orElseThrow().asString());
      assertEquals("paid", shop.cache().get("invoice:7").orElseThrow().asString());
      assertEquals(
          "invoice 7 paid, login allowed: true",
          orders.next(Duration.ofSeconds(15)).orElseThrow().event().payloadAsString());
    }
  }
}
