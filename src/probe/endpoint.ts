/**
 * Where a probe goes: HOST:PORT as a user writes it (the echo server's address to measure, or where it
 * listens), and a host name turned into the one address that every connection of a measurement uses.
 */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { TcpkaError, usage } from "../errors.js";
import { parsePort } from "../filter.js";
import { formatMs } from "../settings.js";

export interface Endpoint {
  /** undefined: every address (only for listening). */
  host: string | undefined;
  port: number;
}

const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/**
 * "HOST:PORT", "[IPv6]:PORT", and, when `hostOptional`, "PORT" or ":PORT". The host is an IP address or a DNS
 * name; an IPv6 address needs brackets (the port would be ambiguous otherwise).
 */
export function parseEndpoint(what: string, text: string, hostOptional: boolean): Endpoint {
  const example = hostOptional
    ? "7007, :7007, 198.51.100.7:7007 or [2001:db8::7]:7007"
    : "198.51.100.7:7007, db.internal:5432 or [2001:db8::7]:7007";
  const t = text.trim();
  if (hostOptional && /^:?\d+$/.test(t)) return { host: undefined, port: parsePort(what, t.replace(/^:/, "")) };
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(t);
  if (bracketed) {
    const host = bracketed[1] as string;
    if (isIP(host) !== 6) throw usage(`${what}: [${host}] is not an IPv6 address`, `use ${example}`);
    return { host, port: parsePort(what, bracketed[2] as string) };
  }
  const i = t.lastIndexOf(":");
  if (i < 0) throw usage(`${what}: ${t || "(empty)"} has no port`, `use ${example}`);
  const host = t.slice(0, i);
  if (host.includes(":")) throw usage(`${what}: put an IPv6 address in brackets: [${host}]:${t.slice(i + 1)}`);
  if (host === "" && hostOptional) return { host: undefined, port: parsePort(what, t.slice(i + 1)) };
  if (host === "") throw usage(`${what}: ${t} has no host`, `use ${example}`);
  if (isIP(host) === 0 && (/^[\d.]+$/.test(host) || !HOSTNAME.test(host))) {
    throw usage(`${what}: ${host} is not an IP address or host name`, `use ${example}`);
  }
  return { host, port: parsePort(what, t.slice(i + 1)) };
}

/**
 * The address of `host` (an IP address is its own): looked up once, so that every connection of a measurement
 * goes to the same server. A lookup that does not answer within `timeoutMs` is an error, not a hang.
 */
export async function resolveHost(host: string, timeoutMs = 5000): Promise<string> {
  if (isIP(host)) return host;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new TcpkaError("system", `cannot resolve ${host}: no answer within ${formatMs(timeoutMs)}`, {
            hint: "check the DNS servers in /etc/resolv.conf, or give an IP address",
          }),
        ),
      timeoutMs,
    );
  });
  try {
    const r = await Promise.race([lookup(host), timeout]);
    return r.address;
  } catch (e) {
    if (e instanceof TcpkaError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOTFOUND") {
      throw new TcpkaError("not-found", `cannot resolve ${host}: no such host`, {
        hint: "check the host name, or give an IP address",
        exitCode: 1, // the name is well formed: its lookup failed
      });
    }
    throw new TcpkaError(
      "system",
      `cannot resolve ${host}: ${code === "EAI_AGAIN" ? "DNS did not answer" : (code ?? String(e))}`,
      {
        hint: "check the DNS servers in /etc/resolv.conf, or give an IP address",
      },
    );
  } finally {
    clearTimeout(timer);
  }
}
