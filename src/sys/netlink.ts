/**
 * NETLINK_SOCK_DIAG dumps. Node cannot open AF_NETLINK sockets itself, so the socket comes from socket(2)
 * through koffi and is then read and written with fs.readSync/fs.writeSync, which call read(2)/write(2).
 */
import { readSync, writeSync } from "node:fs";
import { TcpkaError } from "../errors.js";
import {
  AF_NETLINK,
  INET_DIAG_REQ_V2_LEN,
  IPPROTO_TCP,
  NETLINK_SOCK_DIAG,
  NLM_F_DUMP,
  NLM_F_REQUEST,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  SOCK_CLOEXEC,
  SOCK_DIAG_BY_FAMILY,
  SOCK_RAW,
} from "../kernel/constants.js";
import { close, SysError, socket } from "./libc.js";

// A dump skb is at most SKB_WITH_OVERHEAD(32768) bytes (netlink_recvmsg caps max_recvmsg_len there), so one
// read of this size never truncates a message.
const RECV_SIZE = 64 * 1024;
let recvBuf: Buffer | undefined;

export interface InetDiagRequest {
  family: number; // AF_INET or AF_INET6
  states: number; // bitmask of 1 << TCP state
  ext?: number; // idiag_ext bitmask of extensions to include
}

/**
 * Dump the TCP sockets of one address family in this network namespace. `onMessage` gets the buffer and the
 * offset and length of each inet_diag_msg payload (after its nlmsghdr); the buffer is reused between reads.
 */
export function inetDiagDump(
  req: InetDiagRequest,
  onMessage: (buf: Buffer, offset: number, length: number) => void,
): void {
  const fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  try {
    const seq = (Date.now() & 0x7fffffff) >>> 0;
    const msg = Buffer.alloc(NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN);
    msg.writeUInt32LE(msg.length, 0); // nlmsg_len
    msg.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4); // nlmsg_type
    msg.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6); // nlmsg_flags
    msg.writeUInt32LE(seq, 8); // nlmsg_seq
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then an all-zero inet_diag_sockid.
    msg.writeUInt8(req.family, 16);
    msg.writeUInt8(IPPROTO_TCP, 17);
    msg.writeUInt8(req.ext ?? 0, 18);
    msg.writeUInt32LE(req.states >>> 0, 20);
    try {
      writeSync(fd, msg);
    } catch (e) {
      throw nodeError("sendmsg(NETLINK_SOCK_DIAG)", e);
    }

    recvBuf ??= Buffer.allocUnsafe(RECV_SIZE);
    const buf = recvBuf;
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, buf, 0, buf.length, null);
      } catch (e) {
        throw nodeError("recvmsg(NETLINK_SOCK_DIAG)", e);
      }
      if (n === 0) return;
      let off = 0;
      while (off + NLMSG_HDRLEN <= n) {
        const len = buf.readUInt32LE(off);
        const type = buf.readUInt16LE(off + 4);
        if (len < NLMSG_HDRLEN || off + len > n) {
          throw new TcpkaError("system", "sock_diag: malformed netlink message");
        }
        if (type === NLMSG_DONE) return;
        if (type === NLMSG_ERROR) {
          const err = -buf.readInt32LE(off + NLMSG_HDRLEN);
          if (err === 0) return;
          throw new SysError("sock_diag", err);
        }
        if (type === SOCK_DIAG_BY_FAMILY) onMessage(buf, off + NLMSG_HDRLEN, len - NLMSG_HDRLEN);
        off += (len + 3) & ~3; // NLMSG_ALIGN
      }
    }
  } finally {
    close(fd);
  }
}

function nodeError(call: string, e: unknown): TcpkaError {
  const code = (e as NodeJS.ErrnoException).errno;
  if (typeof code === "number") return new SysError(call, -code);
  return new TcpkaError("system", `${call}: ${String(e)}`);
}
