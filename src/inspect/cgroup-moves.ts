/**
 * Processes moved into another cgroup v2, as it happens (src/bpf/cgroup-moves.ts on the cgroup_attach_task
 * tracepoint): what the proc connector does not tell (it reports exec, uid and name changes, not moves). For the
 * agent: a process written into an enforced cgroup's cgroup.procs would otherwise get the cgroup's rule until the
 * next resync. The ring is read when asked (take), every few hundred milliseconds by the caller; closed by stop().
 */

import { assemble, Listing } from "../bpf/asm.js";
import { cgroupMovesProgram, LOST, moveOffsets, RECORD } from "../bpf/cgroup-moves.js";
import { BPF_TRACE_RAW_TP } from "../kernel/constants.js";
import { counterMapCreate, counterRead, tracingAttach, tracingProgLoad } from "../sys/bpf.js";
import { CachedBtf } from "../sys/btf.js";
import { close } from "../sys/libc.js";
import { RingBuffer } from "../sys/ringbuf.js";

/** 64 KiB: 8,000 moves between two reads. */
const RING_SIZE = 1 << 16;

export class CgroupMoves {
  private lostSeen = 0n;

  private constructor(
    private readonly fds: number[],
    private readonly lost: number,
    private readonly ring: RingBuffer,
  ) {}

  /** Load and attach; throws an Error saying why not (no BTF, no tp_btf, not allowed). */
  static start(): CgroupMoves {
    const fds: number[] = [];
    let ring: RingBuffer | undefined;
    try {
      const btf = CachedBtf.open();
      const o = moveOffsets(btf);
      const id = btf.typeId("TYPEDEF", "btf_trace_cgroup_attach_task");
      btf.save();
      ring = RingBuffer.create("tcpka_moves", RING_SIZE);
      const lost = counterMapCreate("tcpka_moves_lost", 1);
      fds.push(lost);
      const insns = cgroupMovesProgram(o, ring.fd, lost);
      const prog = tracingProgLoad({
        name: "tcpka_moves",
        insns: assemble(insns),
        listing: new Listing(insns),
        attachType: BPF_TRACE_RAW_TP,
        attachBtfId: id,
      });
      fds.push(prog);
      fds.push(tracingAttach(prog));
      return new CgroupMoves(fds, lost, ring);
    } catch (e) {
      for (const fd of fds.reverse()) close(fd);
      ring?.close();
      throw e;
    }
  }

  /** The processes (tgids, each once) moved since the last call, and whether some moves were lost meanwhile. */
  take(): { pids: number[]; lost: boolean } {
    const pids = new Set<number>();
    this.ring.take((data, at, length) => {
      if (length >= RECORD) pids.add(data.readUInt32LE(at));
    });
    const lost = counterRead(this.lost, LOST);
    const more = lost > this.lostSeen;
    this.lostSeen = lost;
    return { pids: [...pids], lost: more };
  }

  stop(): void {
    for (const fd of this.fds.reverse()) close(fd);
    this.fds.length = 0;
    this.ring.close();
  }
}
