// Starts a real redis-server and a real cachet server (the repo's .venv) on free
// loopback ports for the tests, and stops both afterwards.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Client, credentials } from "@grpc/grpc-js";

const SERVING = Buffer.from([0x08, 0x01]); // grpc.health.v1.HealthCheckResponse{status: SERVING}

export interface RunningServer {
  address: string;
  /** The redis-server behind it (tests that break its connections use it). */
  redisPort: number;
  stop(): Promise<void>;
  /** Stops the redis-server only: the cachet server then answers UNAVAILABLE. */
  stopRedis(): Promise<void>;
  /** Freezes the cachet server (SIGSTOP): connections stay open, nothing is answered. */
  pauseServer(): void;
  /** Kills the cachet server (SIGKILL, a crash: its connections drop; SIGTERM: it drains), paused or not. */
  killServer(signal?: "SIGKILL" | "SIGTERM"): Promise<void>;
  /** Starts the cachet server again on the same address, and waits until it serves. */
  restartServer(): Promise<void>;
}

/** Starts both, the cachet server with `env` added to its environment. */
export async function startServer(env: Record<string, string> = {}): Promise<RunningServer> {
  const root = repoRoot();
  const logs = mkdtempSync(join(tmpdir(), "cachet-ts-client-"));
  const children: ChildProcess[] = [];
  const stop = async () => {
    for (const child of children.reverse()) {
      await terminate(child);
    }
    rmSync(logs, { recursive: true, force: true });
  };
  try {
    const redisPort = await freePort();
    const redisArgs = ["--bind", "127.0.0.1", "--port", String(redisPort), "--save", "", "--appendonly", "no", "--dir", logs];
    const redis = launch("redis-server", redisArgs, join(logs, "redis.log"));
    children.push(redis);
    await waitFor(10_000, () => tcpOpen(redisPort));

    const address = `127.0.0.1:${await freePort()}`;
    // Health on a plaintext port of its own, so readiness is checked alike with TLS on.
    const healthAddress = `127.0.0.1:${await freePort()}`;
    const serverLog = join(logs, "server.log");
    const startCachet = async () => {
      const server = launch(join(root, ".venv", "bin", "python"), ["-m", "cachet_server"], serverLog, {
        CACHET_REDIS_URL: `redis://127.0.0.1:${redisPort}`,
        CACHET_LISTEN: address,
        CACHET_HEALTH_LISTEN: healthAddress,
        CACHET_METRICS__LISTEN: "", // no metrics port: several test servers run at once
        CACHET_AUTH__MODE: "off", // tests that need auth configure it in `env`
        ...env,
      });
      children.push(server);
      try {
        await waitFor(30_000, () => serving(healthAddress));
      } catch (error) {
        throw new Error(`cachet server not serving: ${error}\n${readFileSync(serverLog, "utf8")}`);
      }
      return server;
    };
    let server = await startCachet();
    const killServer = async (signal: "SIGKILL" | "SIGTERM" = "SIGKILL") => {
      const exited = new Promise<void>((resolve) => server.once("exit", () => resolve()));
      if (server.exitCode === null && server.signalCode === null) {
        server.kill(signal);
        await exited;
      }
    };
    return {
      address,
      redisPort,
      stop,
      stopRedis: () => terminate(redis),
      pauseServer: () => server.kill("SIGSTOP"),
      killServer,
      restartServer: async () => {
        await killServer("SIGKILL");
        server = await startCachet();
      },
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** The nearest parent directory holding the Python server. */
export function repoRoot(): string {
  for (let dir = process.cwd(); ; dir = dirname(dir)) {
    if (existsSync(join(dir, "server", "cachet_server"))) {
      return dir;
    }
    if (dirname(dir) === dir) {
      throw new Error("cachet repository root not found above the working directory");
    }
  }
}

function launch(command: string, args: string[], logPath: string, env: Record<string, string> = {}): ChildProcess {
  const log = openSync(logPath, "w");
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["ignore", log, log] });
  // Never leave a server behind if the test process exits without running `stop`.
  const kill = () => child.kill("SIGKILL");
  process.once("exit", kill);
  child.once("exit", () => process.removeListener("exit", kill));
  return child;
}

/** SIGTERM (cachet drains and exits), then SIGKILL if it lingers. */
async function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return;
  }
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
  await exited;
  clearTimeout(timer);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function tcpOpen(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => {
      socket.end();
      resolve();
    });
    socket.once("error", reject);
  });
}

/** One standard gRPC health check (grpc.health.v1.Health/Check, whole server). */
function serving(address: string): Promise<void> {
  const client = new Client(address, credentials.createInsecure());
  return new Promise<void>((resolve, reject) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (request: Buffer) => request,
      (response: Buffer) => response,
      Buffer.alloc(0), // HealthCheckRequest{service: ""}
      { deadline: new Date(Date.now() + 1000) },
      (error, response) => {
        if (error) reject(error);
        else if (response && SERVING.equals(response)) resolve();
        else reject(new Error(`health answered ${response?.toString("hex")}`));
      },
    );
  }).finally(() => client.close());
}

async function waitFor(limitMs: number, probe: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    try {
      return await probe();
    } catch (error) {
      if (Date.now() > deadline) {
        throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}
