// A real OpenID provider (the npm package oidc-provider) for the OIDC sign-in tests.
//
// Started by tests/integration/server/oidckit.py with one JSON object in the
// environment variable BASTION_OIDC_CONFIG:
//   {"module": "file:///.../node_modules/oidc-provider/lib/index.js",
//    "port": 41234, "clients": [...], "jwks": {"keys": [...]},
//    "accounts": {"alice": {"email": "...", "email_verified": true}, ...}}
// It listens on 127.0.0.1:port only and prints "listening <issuer>" when ready.
//
// The login page is replaced by a test user agent's shortcut: the tests open
// /interaction/<uid>?account=<id> and the provider finishes login and consent for that
// account at once (openid + email). Everything else (authorization endpoint, PKCE,
// code issuance and single use, token endpoint, ID token signing, discovery, JWKS)
// is the package's own code.

import http from 'node:http';

const config = JSON.parse(process.env.BASTION_OIDC_CONFIG);
const { default: Provider } = await import(config.module);
const issuer = `http://127.0.0.1:${config.port}`;

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: config.jwks,
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  scopes: ['openid', 'email'],
  // put the e-mail claims into the ID token, as most hosted providers do (bastion reads
  // them from the ID token only, see docs/adr/0021-oidc-sign-in.md)
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['bastion-test-only-cookie-key'] },
  async findAccount(_ctx, id) {
    const account = config.accounts[id];
    if (!account) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...account }) };
  },
});

const handler = provider.callback();

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  const match = url.pathname.match(/^\/interaction\/([^/]+)$/);
  if (!match) {
    handler(req, res);
    return;
  }
  try {
    const details = await provider.interactionDetails(req, res);
    const accountId = url.searchParams.get('account');
    if (!accountId || !config.accounts[accountId]) {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end('give ?account=<id> of a configured account');
      return;
    }
    const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
    grant.addOIDCScope('openid email');
    const grantId = await grant.save();
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId }, consent: { grantId } },
      { mergeWithLastSubmission: false },
    );
  } catch (err) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(err));
  }
});

server.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`listening ${issuer}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
