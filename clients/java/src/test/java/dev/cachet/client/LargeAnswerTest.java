package dev.cachet.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.security.SecureRandom;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * Answers past gRPC's default 4 MiB receive limit reach the client: the server sends up to its
 * limits.max_message_bytes (8 MiB by default) and the channel takes whatever it sends. Six values
 * of 1 MiB (the server's largest value, one set each) come back in one GetMany: a 6 MiB answer.
 */
@ExtendWith(LiveServer.class)
@Timeout(value = 60, unit = TimeUnit.SECONDS)
class LargeAnswerTest {
  private static final int MIB = 1024 * 1024;

  /** Six distinct 1 MiB values under fresh keys, each written with its own set. */
  private static Map<String, byte[]> setSixMebibytes(CachetClient client) {
    SecureRandom random = new SecureRandom();
    Map<String, byte[]> values = new LinkedHashMap<>();
    for (int n = 0; n < 6; n++) {
      byte[] value = new byte[MIB];
      random.nextBytes(value);
      String key = "big:" + n + ":" + UUID.randomUUID();
      client.cache().set(key, value, SetOptions.ttl(Duration.ofMinutes(1)));
      values.put(key, value);
    }
    return values;
  }

  @Test
  void aGetManyAnswerOfSixMebibytesArrivesIntact() {
    try (CachetClient client = LiveServer.client("java-large")) {
      Map<String, byte[]> values = setSixMebibytes(client);
      Map<String, CachedValue> found = client.cache().getMany(values.keySet());
      assertEquals(values.keySet(), found.keySet());
      values.forEach((key, value) -> assertArrayEquals(value, found.get(key).bytes(), key));
    }
  }

  @Test
  void theBuilderCanCapTheInboundSizeAgain() {
    try (CachetClient capped =
        CachetClient.builder()
            .target(LiveServer.target())
            .namespace("java-large-capped")
            .maxInboundMessageSize(4 * MIB)
            .build()) {
      Map<String, byte[]> values = setSixMebibytes(capped);
      assertThrows(ResourceExhaustedException.class, () -> capped.cache().getMany(values.keySet()));
      String first = values.keySet().iterator().next();
      Map<String, CachedValue> one = capped.cache().getMany(List.of(first));
      assertArrayEquals(values.get(first), one.get(first).bytes());
    }
    assertThrows(
        IllegalArgumentException.class, () -> CachetClient.builder().maxInboundMessageSize(0));
  }
}
