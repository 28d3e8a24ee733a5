/** Other users than root, as a test plays them: the unprivileged attacker, and how a command is run as someone. */

export interface User {
  uid: number;
  gid: number;
}

/** The unprivileged user every Linux system has. */
export const NOBODY: User = { uid: 65534, gid: 65534 };

/** The argv prefix that runs a command as `user` (setpriv, no supplementary groups); nothing for root. */
export function asUser(user: User | undefined): string[] {
  return user ? ["setpriv", `--reuid=${user.uid}`, `--regid=${user.gid}`, "--clear-groups", "--"] : [];
}
