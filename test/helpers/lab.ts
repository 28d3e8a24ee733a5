/**
 * The firewall lab: three network namespaces, client — router — server, joined by veth pairs, with a stateful
 * nftables filter on the router's forward hook that behaves like a real firewall or NAT gateway: it lets
 * established connections through, lets a connection start only with a SYN, and drops everything else —
 * including the next packet of a connection that stayed idle longer than conntrack's established timeout
 * (set per lab, e.g. 5s) and was forgotten. Built on Netns (test/helpers/netns.ts).
 *
 *   client 198.18.1.2/24 ─ c0 ══ r0 ─ router 198.18.1.1 | 198.19.2.1 ─ r1 ══ s0 ─ server 198.19.2.2/24
 *
 * Addresses come from 198.18.0.0/15 (benchmarking, RFC 2544). Interface names live inside the namespaces, so
 * labs never collide, with each other or with the host. Everything a lab starts is killed by pid and its
 * namespaces deleted when the test (or file) that made it ends, passed or failed; processes that something
 * in the lab forked are found with `ip netns pids` and killed too.
 */
import { spawnSync } from "node:child_process";
import { appendFileSync, chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Netns, sysctlPath } from "./netns.js";
import { fixture } from "./paths.js";
import { cleanEnv, type Done, killPid, type Process } from "./processes.js";
import type { Scope } from "./scope.js";
import type { User } from "./users.js";

export const CLIENT_IP = "198.18.1.2";
export const ROUTER_CLIENT_IP = "198.18.1.1";
export const ROUTER_SERVER_IP = "198.19.2.1";
export const SERVER_IP = "198.19.2.2";
/** In the server's subnet, but no host has it: the router's ARP fails and it answers "host unreachable". */
export const NOBODY_IP = "198.19.2.99";
export const LAB_NET = "198.18.0.0/15";

export interface LabOptions {
  /**
   * The stateful filter on the router (default true). Without it the router just forwards: there is no
   * middlebox on the path.
   */
  firewall?: boolean;
  /** conntrack's timeout for established TCP connections, in seconds (the kernel default is 5 days). */
  idleTimeout?: number;
}

const TIMEOUT_SYSCTL = "net.netfilter.nf_conntrack_tcp_timeout_established";
const LOOSE_SYSCTL = "net.netfilter.nf_conntrack_tcp_loose";

/**
 * The router's filter. `tcp flags & (syn | ack) == syn`: only a bare SYN may start a connection. With
 * nf_conntrack_tcp_loose=0, conntrack also refuses to pick up a connection from a mid-stream packet, so a
 * packet that arrives after its entry expired is "invalid" and falls to the drop policy — as in a real
 * firewall — instead of re-creating the entry.
 */
const FIREWALL = `
table inet lab {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ct state new tcp flags & (syn | ack) == syn accept
    ct state new icmp type echo-request accept
  }
}
`;

/** "Pulling the cable": drop every forwarded packet, both ways, silently (no ICMP error, as a dead link). */
const CABLE_CUT = `
table inet cable {
  chain forward {
    type filter hook forward priority -300; policy drop;
  }
}
`;

export class Lab {
  readonly client: Netns;
  readonly router: Netns;
  readonly server: Netns;
  readonly firewall: boolean;
  private readonly cleanups: (() => void)[] = [];
  private destroyed = false;

  private constructor(opts: LabOptions) {
    this.firewall = opts.firewall ?? true;
    // Created without a scope: the lab removes them itself, after the processes inside are gone.
    this.client = Netns.create();
    this.router = Netns.create();
    this.server = Netns.create();
  }

  /** A new lab, torn down when `scope` ends. */
  static create(scope: Scope, opts: LabOptions = {}): Lab {
    const lab = new Lab(opts);
    scope.after(() => lab.destroy());
    try {
      lab.build(opts);
    } catch (e) {
      lab.destroy();
      throw e;
    }
    return lab;
  }

  private build(opts: LabOptions): void {
    const { client, router, server } = this;
    // veth pairs made straight inside the namespaces: their names never exist in the host namespace.
    router.ip("link", "add", "r0", "type", "veth", "peer", "name", "c0", "netns", client.name);
    router.ip("link", "add", "r1", "type", "veth", "peer", "name", "s0", "netns", server.name);
    client.ip("addr", "add", `${CLIENT_IP}/24`, "dev", "c0");
    client.ip("link", "set", "c0", "up");
    client.ip("route", "add", "default", "via", ROUTER_CLIENT_IP);
    router.ip("addr", "add", `${ROUTER_CLIENT_IP}/24`, "dev", "r0");
    router.ip("addr", "add", `${ROUTER_SERVER_IP}/24`, "dev", "r1");
    router.ip("link", "set", "r0", "up");
    router.ip("link", "set", "r1", "up");
    server.ip("addr", "add", `${SERVER_IP}/24`, "dev", "s0");
    server.ip("link", "set", "s0", "up");
    server.ip("route", "add", "default", "via", ROUTER_SERVER_IP);
    router.setSysctl("net.ipv4.ip_forward", 1); // the router's namespace only
    if (this.firewall) {
      router.nft(FIREWALL); // its ct expressions load nf_conntrack if it is a module
      if (router.exec(["test", "-e", sysctlPath(TIMEOUT_SYSCTL)]).status !== 0) {
        spawnSync("modprobe", ["nf_conntrack"], { stdio: "ignore" });
        if (router.exec(["test", "-e", sysctlPath(TIMEOUT_SYSCTL)]).status !== 0) {
          throw new Error(`${TIMEOUT_SYSCTL} is missing in the router namespace: is nf_conntrack available?`);
        }
      }
      router.setSysctl(LOOSE_SYSCTL, 0);
      if (opts.idleTimeout !== undefined) this.setIdleTimeout(opts.idleTimeout);
    } else if (opts.idleTimeout !== undefined) {
      throw new Error("Lab: idleTimeout needs the firewall");
    }
  }

  /** Set conntrack's established-TCP timeout (seconds) in the router: the path's idle timeout. */
  setIdleTimeout(seconds: number): void {
    if (!this.firewall) throw new Error("Lab: no firewall, no idle timeout");
    this.router.setSysctl(TIMEOUT_SYSCTL, seconds);
    const now = Number(this.router.sysctl(TIMEOUT_SYSCTL));
    if (now !== seconds) throw new Error(`${TIMEOUT_SYSCTL} is ${now}, not ${seconds}`);
  }

  /** Drop every packet between client and server, silently, as a dead link or a peer that vanished. */
  pullCable(): void {
    this.router.nft(CABLE_CUT);
  }

  restoreCable(): void {
    this.router.run(["nft", "delete", "table", "inet", "cable"]);
  }

  /** Start a program in one of the lab's namespaces (as root, or as `user`); killed (by pid) at teardown. */
  start(ns: Netns, argv: readonly string[], opts: { user?: User; env?: NodeJS.ProcessEnv } = {}): Process {
    return ns.spawn(argv, { user: opts.user, env: opts.env ?? cleanEnv() });
  }

  /** Run a program in a namespace to its end without blocking the event loop; killed after `timeoutMs`. */
  run(ns: Netns, argv: readonly string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<Done> {
    const p = this.start(ns, argv);
    if (opts.input !== undefined) p.send(opts.input);
    return p.finish(opts.timeoutMs ?? 60_000);
  }

  /** The tcpka CLI (bin/tcpka.js) started in a namespace. */
  tcpka(ns: Netns, args: readonly string[]): Process {
    return ns.startTcpka(args);
  }

  /** Run something at teardown, before the processes are killed and the namespaces deleted (last added, first run). */
  onTeardown(fn: () => void): void {
    this.cleanups.push(fn);
  }

  /** Kill every process in the lab's namespaces (by pid), then delete them. Safe to call twice. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    const errors: unknown[] = [];
    for (const fn of this.cleanups.reverse()) {
      try {
        fn();
      } catch (e) {
        errors.push(e);
      }
    }
    for (const ns of [this.client, this.router, this.server]) {
      for (const pid of pidsIn(ns)) killPid(pid);
      ns.destroy();
    }
    if (errors.length) throw errors[0];
  }
}

/** The pids of the processes whose network namespace is `ns` (`ip netns pids`). */
function pidsIn(ns: Netns): number[] {
  const r = spawnSync("ip", ["netns", "pids", ns.name], { encoding: "utf8" });
  if (r.status !== 0) return [];
  return r.stdout
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number)
    .filter((pid) => pid !== process.pid);
}

// ---------------------------------------------------------------------------------------------------------
// A throwaway PostgreSQL server in the lab's server namespace.

export interface Postgres {
  host: string;
  port: number;
  /** The psql of the same version (an ELF binary, not Debian's perl wrapper). */
  psql: string;
  /** psql's arguments to reach it: no .psqlrc, unaligned, tuples only, quiet. */
  psqlArgs: string[];
}

/** The bin directory of the newest PostgreSQL installed the Debian way (/usr/lib/postgresql/N/bin). */
export function postgresBin(): string | undefined {
  const base = "/usr/lib/postgresql";
  if (!existsSync(base)) return undefined;
  const versions = readdirSync(base)
    .filter((v) => existsSync(join(base, v, "bin", "initdb")))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(base, versions[0], "bin");
}

function postgresUser(): User {
  const id = (flag: string) => {
    const r = spawnSync("id", [flag, "postgres"], { encoding: "utf8" });
    if (r.status !== 0) throw new Error("no postgres user: install the postgresql package");
    return Number(r.stdout.trim());
  };
  return { uid: id("-u"), gid: id("-g") };
}

/**
 * initdb a cluster in a temporary directory, as the postgres user, and start it in the server namespace,
 * listening on SERVER_IP:5432 with trust authentication for the lab network and a private socket directory.
 * Stopped (immediate shutdown) and removed at the lab's teardown.
 */
export function startPostgres(lab: Lab): Postgres {
  const bin = postgresBin();
  if (!bin) throw new Error("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb)");
  const user = postgresUser();
  const dir = mkdtempSync(join(tmpdir(), "tcpka-pg-"));
  chownSync(dir, user.uid, user.gid);
  chmodSync(dir, 0o700);
  const data = join(dir, "data");
  const port = 5432;
  let started = false;
  lab.onTeardown(() => {
    if (started) lab.server.exec([join(bin, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"], { user });
    rmSync(dir, { recursive: true, force: true });
  });
  lab.server.run(
    [join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
    { user, timeoutMs: 60_000 },
  );
  appendFileSync(join(data, "pg_hba.conf"), `host all all ${LAB_NET} trust\n`);
  const options = [
    `-c listen_addresses=${SERVER_IP}`,
    `-c port=${port}`,
    `-c unix_socket_directories=${dir}`,
    "-c fsync=off",
    "-c shared_buffers=16MB",
    "-c max_connections=20",
  ].join(" ");
  started = true;
  lab.server.run([join(bin, "pg_ctl"), "-D", data, "-l", join(dir, "log"), "-o", options, "-w", "-t", "30", "start"], {
    user,
    timeoutMs: 40_000,
  });
  return {
    host: SERVER_IP,
    port,
    psql: join(bin, "psql"),
    psqlArgs: ["-X", "-A", "-t", "-q", "-h", SERVER_IP, "-p", String(port), "-U", "postgres", "postgres"],
  };
}

/** test/fixtures/lab_peer.py: the lab's echo server and clients without keepalive. */
export const LAB_PEER = fixture("lab_peer.py");
