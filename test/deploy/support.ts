// Shared by the permission tests: the regexes docs/rabbitmq.md gives a host's RabbitMQ user.

/** The permissions docs/rabbitmq.md tells the operator to set for host HOST in namespace NS. */
export function applierPermissions(
  ns: string,
  host: string,
): { configure: string; write: string; read: string } {
  const q = (s: string) => s.replace(/[.\\^$|?*+()[\]{}-]/g, '\\$&');
  return {
    configure: `^${q(ns)}\\.applier\\.${q(host)}$`,
    write: `^${q(ns)}\\.(applier\\.${q(host)}|dead-letter)$`,
    read: `^${q(ns)}\\.(applier\\.${q(host)}|decisions)$`,
  };
}
