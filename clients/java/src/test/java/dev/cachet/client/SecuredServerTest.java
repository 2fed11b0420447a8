package dev.cachet.client;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.io.TempDir;

/**
 * The client against a live cachet server with auth required (an API key granted one namespace) and
 * mutual TLS (a throwaway CA): the bearer token, the namespace and the client certificate go out on
 * unary and streaming calls, and refusals arrive as typed exceptions.
 */
@ExtendWith(LiveServer.class)
@Timeout(value = 90, unit = TimeUnit.SECONDS)
class SecuredServerTest {
  private static final String API_KEY = "java-client-test-key-0123456789";

  @TempDir static Path dir;
  private static TestCertificates pki;
  private static LiveServer.Server server;

  @BeforeAll
  static void startSecuredServer() throws Exception {
    pki = TestCertificates.make(dir);
    String digest =
        HexFormat.of()
            .formatHex(MessageDigest.getInstance("SHA-256").digest(API_KEY.getBytes(UTF_8)));
    Path config = dir.resolve("cachet.yaml");
    Files.writeString(
        config,
        "auth:\n"
            + "  mode: required\n"
            + "  api_keys:\n"
            + "    - id: java-tests\n"
            + "      sha256: "
            + digest
            + "\n"
            + "      namespaces: [java-secure]\n"
            + "      roles: [read, write]\n");
    server =
        LiveServer.startServer(
            Map.of(
                "CACHET_CONFIG_FILE", config.toString(),
                "CACHET_TLS__CERT_FILE", pki.serverCertificate().toString(),
                "CACHET_TLS__KEY_FILE", pki.serverKey().toString(),
                "CACHET_TLS__CLIENT_CA_FILE", pki.ca().toString()),
            target ->
                client(target, "java-secure", API_KEY)
                    .defaultDeadline(Duration.ofSeconds(1))
                    .build());
  }

  @AfterAll
  static void stopSecuredServer() {
    if (server != null) {
      server.close();
    }
  }

  private static CachetClient.Builder client(String target, String namespace, String key) {
    return CachetClient.builder()
        .target(target)
        .namespace(namespace)
        .credentials(key)
        .tls(Tls.ca(pki.ca()).clientCertificate(pki.clientCertificate(), pki.clientKey()));
  }

  @Test
  void theGrantedKeyWorksOnUnaryAndStreamingCalls() {
    try (CachetClient client = client(server.target, "java-secure", API_KEY).build();
        Subscription subscription = client.events().subscribe(List.of("secure-news"))) {
      client.cache().set("k", "v".getBytes(UTF_8));
      assertEquals("v", client.cache().get("k").orElseThrow().asString());
      assertEquals(1, client.events().publish("secure-news", Event.of("hi")).receivers());
      assertEquals(
          "hi", subscription.next(Duration.ofSeconds(15)).orElseThrow().event().payloadAsString());
    }
  }

  @Test
  void aWrongKeyIsUnauthenticated() {
    try (CachetClient client = client(server.target, "java-secure", "not-the-key").build()) {
      UnauthenticatedException refused =
          assertThrows(UnauthenticatedException.class, () -> client.cache().get("k"));
      assertFalse(
          refused.getMessage().contains("not-the-key"),
          "the credential never comes back in errors");
    }
  }

  @Test
  void aNamespaceTheKeyIsNotGrantedIsPermissionDenied() {
    try (CachetClient client = client(server.target, "java-other", API_KEY).build()) {
      PermissionDeniedException refused =
          assertThrows(PermissionDeniedException.class, () -> client.cache().get("k"));
      assertEquals("NAMESPACE_NOT_GRANTED", refused.reason());
      assertThrows(PermissionDeniedException.class, () -> client.events().subscribe(List.of("t")));
    }
  }

  @Test
  void withoutTheClientCertificateTheHandshakeFails() {
    try (CachetClient client =
        CachetClient.builder()
            .target(server.target)
            .namespace("java-secure")
            .credentials(API_KEY)
            .tls(Tls.ca(pki.ca()))
            .retries(1, Duration.ofMillis(10))
            .build()) {
      assertThrows(UnavailableException.class, () -> client.cache().get("k"));
    }
  }
}
