/**
 * The agent's declared policy (issue 16): one YAML file, /etc/tcpka/policy.yaml by default, read with a kept
 * parser (yaml) and checked against a JSON Schema (ajv), then each value with the same parsers as the command
 * line (durations, counts, --only/--except rules, --for presets). Every error names its line, its column and
 * the field, as FILE:LINE:COL: rules[0].keepalive.idle: …, one line each; a policy with any error is not used.
 *
 *   rules:
 *     - name: billing-db
 *       match: {container: {name: "billing-*"}}
 *       connections: {only: ["10.0.0.0/8:5432"]}
 *       keepalive: {idle: 60s, interval: 10s, count: 6}
 *     - name: api-behind-azure-lb
 *       match: {unit: api.service}
 *       keepalive: {for: azure-lb}
 *       mode: force
 *
 * What a rule selects (match: one or more of container, pod, unit, cgroup, process, user, all of which must hold),
 * which connections (connections.only / except, as --only / --except), the settings (keepalive: for a preset, or
 * idle / interval / count / user_timeout, the ones given replacing the preset's, or tcpka's defaults of 60s / 10s / 6
 * as on the command line), the mode (strengthen,
 * the default, or force) and the mechanism (auto, the default: the best the kernel allows). The first rule that
 * matches a process wins.
 */
import { Ajv, type ErrorObject } from "ajv";
import { isMap, isPair, isScalar, LineCounter, type Node, parseDocument } from "yaml";
import { TcpkaError } from "./errors.js";
import { type EndpointRule, parseEndpointRule } from "./filter.js";
import { findPreset, PRESETS, presetSettings } from "./presets.js";
import {
  type ApplyMode,
  DEFAULT_SETTINGS,
  type KeepAliveSettings,
  parseCount,
  parseIdle,
  parseInterval,
  parseUserTimeout,
} from "./settings.js";

export const DEFAULT_POLICY = "/etc/tcpka/policy.yaml";
/** A policy is a page of rules, not data: a bigger file is refused before it is parsed. */
export const MAX_POLICY_BYTES = 1 << 20;

export interface RuleMatch {
  container?: { name?: string; image?: string; labels?: Record<string, string> };
  pod?: { namespace?: string; name?: string; container?: string };
  unit?: string;
  cgroup?: string;
  process?: { name?: string; exe?: string };
  user?: string | number;
}

export interface PolicyRule {
  name: string;
  /** the line of the rule in the file */
  line: number;
  match: RuleMatch;
  only: EndpointRule[];
  except: EndpointRule[];
  settings: KeepAliveSettings;
  /** the preset the settings came from, if any */
  preset?: string;
  mode: ApplyMode;
  mechanism: "auto" | "enforce" | "live";
}

export interface Policy {
  rules: PolicyRule[];
}

const DURATION = { type: ["string", "integer"] };
const GLOB = { type: "string", minLength: 1, maxLength: 4096 };
const SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["rules"],
  properties: {
    rules: { type: "array", items: { $ref: "#/$defs/rule" } },
  },
  $defs: {
    rule: {
      type: "object",
      additionalProperties: false,
      required: ["name", "match", "keepalive"],
      properties: {
        name: { type: "string", pattern: "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$" },
        match: {
          type: "object",
          additionalProperties: false,
          minProperties: 1,
          properties: {
            container: {
              type: "object",
              additionalProperties: false,
              minProperties: 1,
              properties: {
                name: GLOB,
                image: GLOB,
                labels: {
                  type: "object",
                  minProperties: 1,
                  additionalProperties: { type: "string", maxLength: 4096 },
                },
              },
            },
            pod: {
              type: "object",
              additionalProperties: false,
              minProperties: 1,
              properties: { namespace: GLOB, name: GLOB, container: GLOB },
            },
            unit: GLOB,
            cgroup: GLOB,
            process: {
              type: "object",
              additionalProperties: false,
              minProperties: 1,
              properties: { name: GLOB, exe: GLOB },
            },
            user: { type: ["string", "integer"] },
          },
        },
        connections: {
          type: "object",
          additionalProperties: false,
          properties: {
            only: { type: "array", items: { type: "string" } },
            except: { type: "array", items: { type: "string" } },
          },
        },
        keepalive: {
          type: "object",
          additionalProperties: false,
          minProperties: 1,
          properties: {
            for: { enum: PRESETS.map((p) => p.name) },
            idle: DURATION,
            interval: DURATION,
            count: { type: ["string", "integer"] },
            user_timeout: DURATION,
          },
        },
        mode: { enum: ["strengthen", "force"] },
        mechanism: { enum: ["auto", "enforce", "live"] },
      },
    },
  },
} as const;

/** One error in a policy file, where it is. */
export interface PolicyError {
  line: number;
  col: number;
  /** the field, as rules[0].keepalive.idle ("" for the document) */
  field: string;
  message: string;
}

/** The errors of a policy, one line each, as FILE:LINE:COL: FIELD: MESSAGE. */
export class PolicyErrors extends TcpkaError {
  constructor(
    readonly file: string,
    readonly errors: readonly PolicyError[],
  ) {
    super(
      "invalid",
      errors.map((e) => `${file}:${e.line}:${e.col}: ${e.field ? `${e.field}: ` : ""}${e.message}`).join("\n"),
      { hint: "tcpka agent --check FILE checks a policy without applying it" },
    );
  }
}

let validate: ReturnType<Ajv["compile"]> | undefined;

/**
 * Parse and check the policy text of `file` (its name is only for messages). Throws PolicyErrors with every
 * error found: YAML syntax, then the schema, then each value.
 */
export function parsePolicy(text: string, file: string): Policy {
  if (Buffer.byteLength(text) > MAX_POLICY_BYTES) {
    throw new PolicyErrors(file, [{ line: 1, col: 1, field: "", message: `longer than ${MAX_POLICY_BYTES} bytes` }]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number) => {
    const p = lines.linePos(offset);
    return { line: p.line, col: p.col };
  };
  if (doc.errors.length) {
    throw new PolicyErrors(
      file,
      doc.errors.map((e) => ({ ...at(e.pos[0]), field: "", message: e.message.split("\n")[0] as string })),
    );
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 }); // aliases that would expand without end are refused
  } catch (e) {
    throw new PolicyErrors(file, [{ line: 1, col: 1, field: "", message: (e as Error).message }]);
  }
  // The node at a path, for where an error is: the deepest node the path still reaches.
  const nodeAt = (path: readonly (string | number)[], key?: string): { line: number; col: number } => {
    let node: unknown = doc.contents;
    for (const step of path) {
      const next = (node as { get?: (k: unknown, keep: boolean) => unknown })?.get?.(step, true);
      if (next === undefined) break;
      node = next;
    }
    if (key !== undefined && isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && p.key.value === key);
      const range = (pair?.key as Node | undefined)?.range;
      if (range) return at(range[0]);
    }
    const range = (node as Node | null)?.range;
    return range ? at(range[0]) : { line: 1, col: 1 };
  };
  validate ??= new Ajv({ allErrors: true, strict: true, allowUnionTypes: true, verbose: true }).compile(SCHEMA);
  const errors: PolicyError[] = [];
  if (!validate(data)) errors.push(...(validate.errors ?? []).filter(useful).map((e) => schemaError(e, nodeAt)));
  // Each value too, also where the schema found errors elsewhere: every error at once. What the schema refused
  // (a value of the wrong type) is not looked at again.
  const rules: PolicyRule[] = [];
  const seen = new Set<string>();
  const list = (data as { rules?: unknown } | null)?.rules;
  const raw = (Array.isArray(list) ? list : []).map((r) => (isObject(r) ? (r as unknown as RawRule) : undefined));
  raw.forEach((r, i) => {
    if (!r) return;
    const where = (field: string, ...path: (string | number)[]) => ({
      ...nodeAt(["rules", i, ...path]),
      field: `rules[${i}]${field}`,
    });
    const fail = (field: string, path: (string | number)[], e: unknown) =>
      errors.push({ ...where(field, ...path), message: e instanceof Error ? e.message : String(e) });
    if (typeof r.name === "string") {
      if (seen.has(r.name)) fail(".name", ["name"], `a rule named ${JSON.stringify(r.name)} comes earlier`);
      seen.add(r.name);
    }
    const k = isObject(r.keepalive) ? r.keepalive : {};
    const preset = typeof k.for === "string" ? findPreset(k.for) : undefined;
    // The three times as the command line has them: the preset's, else tcpka's defaults, a value given replacing.
    const base = preset ? presetSettings(preset) : DEFAULT_SETTINGS;
    const settings: KeepAliveSettings = { ...base };
    // A value's error names its field as the command line's names its flag: "rules[0].keepalive.idle 0s: …".
    const valueError = (field: string, path: (string | number)[], e: unknown) =>
      errors.push({ ...where(field, ...path), field: "", message: e instanceof Error ? e.message : String(e) });
    const one = <T>(key: keyof RawRule["keepalive"], parse: (text: string, flag: string) => T, set: (v: T) => void) => {
      const v = k[key];
      if (typeof v !== "string" && typeof v !== "number") return; // absent, or the schema's error
      try {
        set(parse(String(v), `rules[${i}].keepalive.${key}`));
      } catch (e) {
        valueError(`.keepalive.${key}`, ["keepalive", key], e);
      }
    };
    one("idle", parseIdle, (v) => {
      settings.idle = v;
    });
    one("interval", parseInterval, (v) => {
      settings.interval = v;
    });
    one("count", parseCount, (v) => {
      settings.count = v;
    });
    one("user_timeout", parseUserTimeout, (v) => {
      settings.userTimeout = v;
    });
    const endpoints = (which: "only" | "except") => {
      const texts = isObject(r.connections) ? r.connections[which] : undefined;
      return (Array.isArray(texts) ? texts : []).flatMap((text, j) => {
        if (typeof text !== "string") return [];
        try {
          return parseEndpointRule(`rules[${i}].connections.${which}[${j}]`, text);
        } catch (e) {
          valueError(`.connections.${which}[${j}]`, ["connections", which, j], e);
          return [];
        }
      });
    };
    rules.push({
      name: r.name,
      line: nodeAt(["rules", i]).line,
      match: r.match,
      only: endpoints("only"),
      except: endpoints("except"),
      settings,
      ...(preset ? { preset: preset.name } : {}),
      mode: r.mode ?? "strengthen",
      mechanism: r.mechanism ?? "auto",
    });
  });
  if (errors.length)
    throw new PolicyErrors(
      file,
      dedupe(errors).sort((a, b) => a.line - b.line || a.col - b.col),
    );
  return { rules };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

interface RawRule {
  name: string;
  match: RuleMatch;
  connections?: { only?: string[]; except?: string[] };
  keepalive: {
    for?: string;
    idle?: string | number;
    interval?: string | number;
    count?: string | number;
    user_timeout?: string | number;
  };
  mode?: ApplyMode;
  mechanism?: PolicyRule["mechanism"];
}

/** ajv reports a failed oneOf/anyOf/if and each branch: the branches say it better. */
function useful(e: ErrorObject): boolean {
  return e.keyword !== "if" && e.keyword !== "anyOf" && e.keyword !== "oneOf";
}

function dedupe(errors: PolicyError[]): PolicyError[] {
  const seen = new Set<string>();
  return errors.filter((e) => {
    const k = `${e.line}:${e.col}:${e.field}:${e.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** "/rules/0/keepalive/idle" as ["rules", 0, "keepalive", "idle"] and as rules[0].keepalive.idle. */
function pathOf(pointer: string): { path: (string | number)[]; field: string } {
  const path = pointer
    .split("/")
    .slice(1)
    .map((p) => p.replaceAll("~1", "/").replaceAll("~0", "~"))
    .map((p) => (/^\d+$/.test(p) ? Number(p) : p));
  const field = path.map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? p : `.${p}`)).join("");
  return { path, field };
}

function schemaError(
  e: ErrorObject,
  nodeAt: (path: readonly (string | number)[], key?: string) => { line: number; col: number },
): PolicyError {
  const { path, field } = pathOf(e.instancePath);
  const p = e.params as Record<string, unknown>;
  const join = (f: string, k: string) => (f ? `${f}.${k}` : k);
  switch (e.keyword) {
    case "additionalProperty":
    case "additionalProperties": {
      const key = String(p.additionalProperty);
      return { ...nodeAt(path, key), field: join(field, key), message: `not a field here (${known(e)})` };
    }
    case "required":
      return { ...nodeAt(path), field, message: `${String(p.missingProperty)} is missing` };
    case "enum":
      return { ...nodeAt(path), field, message: `one of ${(p.allowedValues as unknown[]).join(", ")}` };
    case "minProperties":
      return { ...nodeAt(path), field, message: "needs at least one field" };
    case "type":
      return { ...nodeAt(path), field, message: `must be ${[p.type].flat().join(" or ")}` };
    case "pattern":
      return {
        ...nodeAt(path),
        field,
        message: "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63",
      };
    default:
      return { ...nodeAt(path), field, message: e.message ?? e.keyword };
  }
}

/** The fields a schema object allows, for an unknown field's message. */
function known(e: ErrorObject): string {
  const props = (e.parentSchema as { properties?: Record<string, unknown> } | undefined)?.properties;
  return props ? `the fields are ${Object.keys(props).join(", ")}` : "no other fields";
}

/** What a rule can match a process by, as tcpka read it (cli/agent.ts); null where the process has none. */
export interface ProcessFacts {
  pid: number;
  comm: string;
  exe: string | null;
  uid: number | null;
  /** the user name of uid, where /etc/passwd has it */
  user: string | null;
  /** the cgroup v2 path, "/system.slice/api.service" */
  cgroup: string | null;
  unit: string | null;
  /** its container as the runtime's records say (inspect/workloads.ts): name and image null where they hold none */
  container: { name: string | null; id: string; image: string | null; labels: ReadonlyMap<string, string> } | null;
  pod: { namespace: string; name: string; container: string | null } | null;
}

/** How one rule met a process: whether it applies, and each of its selectors, held or not, with why. */
export interface RuleVerdict {
  rule: PolicyRule;
  applies: boolean;
  /** a selector that tcpka cannot decide: the rule is passed over, and this says why (every selector is decided now) */
  undecided?: string;
  reasons: { selector: string; holds: boolean; why: string }[];
}

/** A shell-style pattern (* any run, ? one character, everything else itself) as a whole-string RegExp. */
export function globRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\*?]/g, (c) => (c === "*" ? ".*" : c === "?" ? "." : `\\${c}`));
  return new RegExp(`^${body}$`, "s");
}

function glob(pattern: string, value: string | null | undefined): boolean {
  return value !== null && value !== undefined && globRegExp(pattern).test(value);
}

/** A cgroup selector holds for the cgroup itself and every cgroup below it; with * or ?, as a pattern on the path. */
function cgroupHolds(pattern: string, path: string | null): boolean {
  if (path === null) return false;
  if (/[*?]/.test(pattern)) {
    for (let p = path; ; p = p.slice(0, Math.max(1, p.lastIndexOf("/")))) {
      if (glob(pattern, p)) return true;
      if (p === "/") return false;
    }
  }
  const base = pattern.length > 1 ? pattern.replace(/\/+$/, "") : pattern;
  return path === base || base === "/" || path.startsWith(`${base}/`);
}

/** Every rule against one process, in order; the first that applies is the one (see matchPolicy). */
export function explainPolicy(policy: Policy, f: ProcessFacts): RuleVerdict[] {
  return policy.rules.map((rule) => {
    const m = rule.match;
    const reasons: RuleVerdict["reasons"] = [];
    const check = (selector: string, holds: boolean, why: string) => reasons.push({ selector, holds, why });
    if (m.container) {
      const c = f.container;
      if (m.container.name !== undefined) {
        const name = c?.name ?? null;
        check(
          `container.name ${m.container.name}`,
          glob(m.container.name, name),
          c
            ? name === null
              ? "its container has no name in the runtime's records"
              : `its container is ${name}`
            : "not in a container",
        );
      }
      if (m.container.image !== undefined) {
        const image = c?.image ?? null;
        check(
          `container.image ${m.container.image}`,
          glob(m.container.image, image),
          c
            ? image === null
              ? "its container has no image in the runtime's records"
              : `its container's image is ${image}`
            : "not in a container",
        );
      }
      // Every label given must be there, its value matching (a pattern, as names are).
      for (const [key, want] of Object.entries(m.container.labels ?? {})) {
        const have = c?.labels.get(key);
        check(
          `container.labels ${key}=${want}`,
          glob(want, have),
          c
            ? have === undefined
              ? `its container has no label ${key}`
              : `its container's label ${key} is ${have}`
            : "not in a container",
        );
      }
    }
    if (m.pod) {
      const p = f.pod;
      for (const key of ["namespace", "name", "container"] as const) {
        const want = m.pod[key];
        if (want === undefined) continue;
        const have = p ? p[key] : null;
        check(
          `pod.${key} ${want}`,
          glob(want, have),
          p
            ? `its pod's ${key} is ${have ?? "(none: the sandbox, or a container known by its pod's cgroup only)"}`
            : "not in a pod",
        );
      }
    }
    if (m.unit !== undefined)
      check(`unit ${m.unit}`, glob(m.unit, f.unit), f.unit ? `its unit is ${f.unit}` : "in no systemd unit");
    if (m.cgroup !== undefined) {
      check(
        `cgroup ${m.cgroup}`,
        cgroupHolds(m.cgroup, f.cgroup),
        f.cgroup ? `its cgroup is ${f.cgroup}` : "in no cgroup v2",
      );
    }
    if (m.process) {
      if (m.process.name !== undefined)
        check(`process.name ${m.process.name}`, glob(m.process.name, f.comm), `its name is ${f.comm}`);
      if (m.process.exe !== undefined) {
        check(
          `process.exe ${m.process.exe}`,
          glob(m.process.exe, f.exe),
          f.exe ? `it runs ${f.exe}` : "its executable cannot be read",
        );
      }
    }
    if (m.user !== undefined) {
      const holds = typeof m.user === "number" ? f.uid === m.user : f.user === m.user || String(f.uid) === m.user;
      check(`user ${m.user}`, holds, f.uid === null ? "its user cannot be read" : `its user is ${f.user ?? f.uid}`);
    }
    return { rule, applies: reasons.every((r) => r.holds), reasons };
  });
}

/** The rule that applies to a process: the first whose selectors all hold. */
export function matchPolicy(policy: Policy, f: ProcessFacts): PolicyRule | undefined {
  return explainPolicy(policy, f).find((v) => v.applies)?.rule;
}
