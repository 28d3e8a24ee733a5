/**
 * Where a TCP socket connects, as both iterator programs read it (socket-fds.ts, tcp-sockets.ts): the members of
 * struct sock_common that inet_diag_msg_common_fill reports, and the instructions that copy its two addresses
 * into a record. struct sock_common starts struct sock, so the offsets hold from either.
 */
import { AF_INET6 } from "../kernel/constants.js";
import type { BtfFacts } from "../sys/btf.js";
import { Ja, JEq32, LoadMem, type ProgramBuilder, R3, R10, type Reg, StoreImm, StoreMem } from "./asm.js";

export interface EndpointOffsets {
  skcFamily: number;
  skcState: number;
  skcNum: number;
  skcDport: number;
  skcRcvSaddr: number;
  skcDaddr: number;
  skcV6RcvSaddr: number;
  skcV6Daddr: number;
}

export function endpointOffsets(btf: BtfFacts): EndpointOffsets {
  const common = (m: string) => btf.memberOffset("sock_common", m);
  return {
    skcFamily: common("skc_family"),
    skcState: common("skc_state"),
    skcNum: common("skc_num"),
    skcDport: common("skc_dport"),
    skcRcvSaddr: common("skc_rcv_saddr"),
    skcDaddr: common("skc_daddr"),
    skcV6RcvSaddr: common("skc_v6_rcv_saddr"),
    skcV6Daddr: common("skc_v6_daddr"),
  };
}

/**
 * Copy the local and the peer address of the socket in `sk` (family in `family`) to the stack at r10 + `local`
 * and r10 + `peer`, 16 bytes each (IPv4: the first 4 bytes, network order, the rest zero), then go to `next`.
 * Uses r3 and the label `${next}_v6`.
 */
export function emitAddresses(
  b: ProgramBuilder,
  o: EndpointOffsets,
  sk: Reg,
  family: Reg,
  local: number,
  peer: number,
  next: string,
): void {
  const v6 = `${next}_v6`;
  b.emit(JEq32.Imm(family, AF_INET6, v6));
  for (const [from, to] of [
    [o.skcRcvSaddr, local],
    [o.skcDaddr, peer],
  ] as const) {
    b.emit(
      LoadMem(R3, sk, from, "W"),
      StoreMem(R10, to, R3, "W"),
      StoreImm(R10, to + 4, 0, "W"),
      StoreImm(R10, to + 8, 0, "DW"),
    );
  }
  b.emit(Ja(next));
  b.label(v6);
  for (const [from, to] of [
    [o.skcV6RcvSaddr, local],
    [o.skcV6Daddr, peer],
  ] as const) {
    b.emit(
      LoadMem(R3, sk, from, "DW"),
      StoreMem(R10, to, R3, "DW"),
      LoadMem(R3, sk, from + 8, "DW"),
      StoreMem(R10, to + 8, R3, "DW"),
    );
  }
}
