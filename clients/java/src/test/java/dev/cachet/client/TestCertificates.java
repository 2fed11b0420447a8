package dev.cachet.client;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A throwaway CA (made by openssl) with a server certificate for 127.0.0.1 and a client
 * certificate.
 */
record TestCertificates(
    Path ca, Path serverCertificate, Path serverKey, Path clientCertificate, Path clientKey) {
  static TestCertificates make(Path dir) throws Exception {
    openssl(
        dir,
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=cachet-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem");
    issue(
        dir, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
    issue(dir, "client", "extendedKeyUsage=clientAuth\n");
    return new TestCertificates(
        dir.resolve("ca.pem"),
        dir.resolve("server.pem"),
        dir.resolve("server.key"),
        dir.resolve("client.pem"),
        dir.resolve("client.key"));
  }

  private static void issue(Path dir, String name, String extensions) throws Exception {
    Files.writeString(dir.resolve(name + ".ext"), extensions);
    openssl(
        dir,
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=" + name,
        "-keyout",
        name + ".key",
        "-out",
        name + ".csr");
    openssl(
        dir,
        "x509",
        "-req",
        "-in",
        name + ".csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        name + ".ext",
        "-out",
        name + ".pem");
  }

  private static void openssl(Path dir, String... arguments) throws Exception {
    List<String> command = new ArrayList<>(List.of("openssl"));
    command.addAll(List.of(arguments));
    Process process =
        new ProcessBuilder(command).directory(dir.toFile()).redirectErrorStream(true).start();
    String output = new String(process.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    if (!process.waitFor(30, TimeUnit.SECONDS) || process.exitValue() != 0) {
      throw new IllegalStateException(
          "openssl " + String.join(" ", arguments) + " failed:\n" + output);
    }
  }
}
