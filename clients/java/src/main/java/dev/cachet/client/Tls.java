package dev.cachet.client;

import io.grpc.ChannelCredentials;
import io.grpc.TlsChannelCredentials;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.util.Objects;

/**
 * TLS settings of a {@link CachetClient}: the CA that signed the server's certificate (the JVM's
 * trust store when none is given) and, for mutual TLS, the client's certificate chain and private
 * key (PEM files; the key in PKCS#8).
 */
public final class Tls {
  private final Path caCertificate;
  private final Path clientCertificate;
  private final Path clientKey;

  private Tls(Path caCertificate, Path clientCertificate, Path clientKey) {
    this.caCertificate = caCertificate;
    this.clientCertificate = clientCertificate;
    this.clientKey = clientKey;
  }

  /** TLS with the JVM's default trust store. */
  public static Tls systemTrust() {
    return new Tls(null, null, null);
  }

  /** TLS trusting the CA certificate(s) in the PEM file {@code caCertificate}. */
  public static Tls ca(Path caCertificate) {
    return new Tls(Objects.requireNonNull(caCertificate, "caCertificate"), null, null);
  }

  /** The same, also presenting a client certificate (mutual TLS). */
  public Tls clientCertificate(Path certificateChain, Path privateKey) {
    return new Tls(
        caCertificate,
        Objects.requireNonNull(certificateChain, "certificateChain"),
        Objects.requireNonNull(privateKey, "privateKey"));
  }

  ChannelCredentials channelCredentials() {
    TlsChannelCredentials.Builder builder = TlsChannelCredentials.newBuilder();
    try {
      if (caCertificate != null) {
        builder.trustManager(caCertificate.toFile());
      }
      if (clientCertificate != null) {
        builder.keyManager(clientCertificate.toFile(), clientKey.toFile());
      }
    } catch (IOException unreadable) {
      throw new UncheckedIOException(
          "cannot read a TLS file: " + unreadable.getMessage(), unreadable);
    }
    return builder.build();
  }
}
