/**
 * How every process reaches Temporal, from the environment: one set of options that fits both the
 * client's `Connection` (@temporalio/client) and the worker's `NativeConnection` (@temporalio/worker).
 *
 *   TEMPORAL_ADDRESS          host:port (127.0.0.1:57233, the dev server of scripts/services.sh)
 *   TEMPORAL_NAMESPACE        (default)
 *   TEMPORAL_TLS              true|false. Unset: TLS is on as soon as any TEMPORAL_TLS_* file,
 *                             TEMPORAL_TLS_SERVER_NAME or an API key is set, else plaintext
 *   TEMPORAL_TLS_CA_FILE      PEM of the CA that signed the server's certificate (unset: the system's roots)
 *   TEMPORAL_TLS_CERT_FILE    PEM client certificate for mTLS ...
 *   TEMPORAL_TLS_KEY_FILE     ... and its PEM private key: both or neither
 *   TEMPORAL_TLS_SERVER_NAME  the name to verify the server's certificate against (SNI) when it is
 *                             not the host of TEMPORAL_ADDRESS
 *   TEMPORAL_API_KEY          API key (Temporal Cloud): sent as a bearer token, implies TLS
 *   TEMPORAL_API_KEY_FILE     the same, read from a file (a mounted Secret); not with TEMPORAL_API_KEY
 *
 * Files are read once, when the options are built; a half-configured setup (a certificate without its
 * key, an API key with TEMPORAL_TLS=false, a file that is missing or not PEM) throws with the variable's
 * name, so a process refuses to start instead of failing on its first call.
 */
import { readFileSync } from 'node:fs';
import type { TLSConfig } from '@temporalio/client';
import { envBool, envOptional, temporalAddress, temporalNamespace } from './env';

/** Accepted by `Connection.connect/lazy` and by `NativeConnection.connect` alike. */
export interface TemporalConnectionOptions {
  address: string;
  /** Absent: plaintext. */
  tls?: TLSConfig;
  apiKey?: string;
}

export interface TemporalSettings {
  namespace: string;
  connection: TemporalConnectionOptions;
  /** For logs: address and security, never a secret ("temporal:7233 (TLS, client certificate)"). */
  description: string;
}

export type ReadFile = (path: string) => Buffer;

const TLS_VARS = ['TEMPORAL_TLS_CA_FILE', 'TEMPORAL_TLS_CERT_FILE', 'TEMPORAL_TLS_KEY_FILE', 'TEMPORAL_TLS_SERVER_NAME'] as const;

/** The connection options for TEMPORAL_ADDRESS with the TLS / API key settings above. */
export function temporalConnectionOptions(env: NodeJS.ProcessEnv = process.env, readFile: ReadFile = readFileSync): TemporalConnectionOptions {
  return temporalSettings(env, readFile).connection;
}

export function temporalSettings(env: NodeJS.ProcessEnv = process.env, readFile: ReadFile = readFileSync): TemporalSettings {
  const address = temporalAddress(env);
  const namespace = temporalNamespace(env);
  const apiKey = apiKeyFrom(env, readFile);
  const tlsSetting = envOptional('TEMPORAL_TLS', env) === undefined ? undefined : envBool('TEMPORAL_TLS', false, env);
  const tlsVarsSet = TLS_VARS.filter((n) => envOptional(n, env) !== undefined);

  if (tlsSetting === false) {
    if (apiKey !== undefined) throw new Error('TEMPORAL_API_KEY needs TLS: unset TEMPORAL_TLS or set it to true');
    if (tlsVarsSet.length)
      throw new Error(`TEMPORAL_TLS=false but ${tlsVarsSet.join(', ')} ${tlsVarsSet.length > 1 ? 'are' : 'is'} set: unset them or set TEMPORAL_TLS=true`);
  }
  const certFile = envOptional('TEMPORAL_TLS_CERT_FILE', env);
  const keyFile = envOptional('TEMPORAL_TLS_KEY_FILE', env);
  if (certFile && !keyFile)
    throw new Error('TEMPORAL_TLS_CERT_FILE is set but TEMPORAL_TLS_KEY_FILE is not: mTLS needs the client certificate and its private key');
  if (keyFile && !certFile)
    throw new Error('TEMPORAL_TLS_KEY_FILE is set but TEMPORAL_TLS_CERT_FILE is not: mTLS needs the client certificate and its private key');

  const tlsOn = tlsSetting ?? (apiKey !== undefined || tlsVarsSet.length > 0);
  const parts: string[] = [];
  const connection: TemporalConnectionOptions = { address };
  if (tlsOn) {
    const tls: TLSConfig = {};
    const caFile = envOptional('TEMPORAL_TLS_CA_FILE', env);
    if (caFile) tls.serverRootCACertificate = pemFile('TEMPORAL_TLS_CA_FILE', caFile, /-----BEGIN CERTIFICATE-----/, 'a PEM certificate', readFile);
    if (certFile && keyFile) {
      tls.clientCertPair = {
        crt: pemFile('TEMPORAL_TLS_CERT_FILE', certFile, /-----BEGIN CERTIFICATE-----/, 'a PEM certificate', readFile),
        key: pemFile('TEMPORAL_TLS_KEY_FILE', keyFile, /-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/, 'a PEM private key', readFile),
      };
    }
    const serverName = envOptional('TEMPORAL_TLS_SERVER_NAME', env);
    if (serverName) tls.serverNameOverride = serverName;
    connection.tls = tls;
    parts.push('TLS');
    if (caFile) parts.push('own CA');
    if (tls.clientCertPair) parts.push('client certificate');
    if (serverName) parts.push(`server name ${serverName}`);
  } else parts.push('plaintext');
  if (apiKey !== undefined) {
    connection.apiKey = apiKey;
    parts.push('API key');
  }
  return { namespace, connection, description: `${address} (${parts.join(', ')})` };
}

function apiKeyFrom(env: NodeJS.ProcessEnv, readFile: ReadFile): string | undefined {
  const key = envOptional('TEMPORAL_API_KEY', env);
  const file = envOptional('TEMPORAL_API_KEY_FILE', env);
  if (key !== undefined && file !== undefined) throw new Error('TEMPORAL_API_KEY and TEMPORAL_API_KEY_FILE are both set: use one');
  if (file === undefined) return key?.trim() || undefined;
  const fromFile = readText('TEMPORAL_API_KEY_FILE', file, readFile).trim();
  if (!fromFile) throw new Error(`TEMPORAL_API_KEY_FILE: ${file} is empty`);
  return fromFile;
}

function readText(name: string, file: string, readFile: ReadFile): string {
  return readBytes(name, file, readFile).toString('utf8');
}

function readBytes(name: string, file: string, readFile: ReadFile): Buffer {
  try {
    return readFile(file);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new Error(`${name}: cannot read ${file} (${e.code ?? e.message})`);
  }
}

function pemFile(name: string, file: string, marker: RegExp, what: string, readFile: ReadFile): Buffer {
  const bytes = readBytes(name, file, readFile);
  if (!marker.test(bytes.toString('utf8'))) throw new Error(`${name}: ${file} is not ${what}`);
  return bytes;
}
