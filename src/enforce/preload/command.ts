/**
 * Finding the program a command line names, as execvp(3) and a shell do.
 */
import { accessSync, constants, statSync } from "node:fs";
import { delimiter, resolve } from "node:path";
import { TcpkaError } from "../../errors.js";

export const DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin";

/**
 * Find a command as execvp(3) and a shell do: a name with a slash as it is, otherwise the first executable
 * regular file in PATH. Fails as a shell does: 127 when there is none, 126 for a directory or a file that is not
 * executable.
 */
export function resolveCommand(cmd: string, path = process.env.PATH ?? DEFAULT_PATH): string {
  const found = findCommand(cmd, path);
  if (found instanceof TcpkaError) throw found;
  return found;
}

export function findCommand(cmd: string, path: string): string | TcpkaError {
  const explicit = cmd.includes("/");
  let denied = false;
  for (const c of explicit ? [resolve(cmd)] : path.split(delimiter).map((d) => resolve(d || ".", cmd))) {
    let dir = false;
    try {
      const st = statSync(c);
      dir = st.isDirectory();
      if (!dir) {
        accessSync(c, constants.X_OK);
        if (st.isFile()) return c;
      }
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") continue;
    }
    // A directory or a file that cannot be executed: execve says EACCES, and execvp goes on and reports that
    // at the end. Shells skip directories in PATH, and say what a directory named with a slash is.
    if (dir && explicit) return new TcpkaError("invalid", `${cmd}: is a directory`, { exitCode: 126 });
    if (!dir) denied = true;
  }
  if (denied) return new TcpkaError("permission", `${cmd}: permission denied`, { exitCode: 126 });
  const what = explicit ? "no such file or directory" : "command not found";
  return new TcpkaError("not-found", `${cmd}: ${what}`, { exitCode: 127 });
}
