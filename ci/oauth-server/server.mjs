// A real, independently written OAuth 2 server for the conformance tests (tests/conformance.rs):
// node-oidc-provider (an OpenID Certified implementation) with the client credentials grant,
// and beside it, on another origin, an API that accepts its access tokens. Run by the tests,
// never by hand; it stops when its standard input closes.
//
// It prints one line once both listen: `ready <token endpoint> <api origin>`.
//
// Environment: TOKEN_TTL (seconds, default 3600). The clients (their secrets hold a space, `:`,
// `+` and `%`, so that an encoding slip shows):
//   conformance-basic  client_secret_basic  scopes "orders:read orders:write"
//   conformance-post   client_secret_post   scopes "orders:read"
// The API (another port, so another origin):
//   GET  /api/*          200 with a valid token, else 401 with WWW-Authenticate: Bearer
//   GET  /admin/stats    {"token_requests", "api_calls", "unauthorized"}
//   POST /admin/revoke   revokes every access token issued so far
import http from 'node:http';
import Provider from 'oidc-provider';

export const SECRET = 'se cret:with+plus%25and%';
const ttl = Number(process.env.TOKEN_TTL || 3600);

const provider = new Provider('http://127.0.0.1', {
  clients: [
    {
      client_id: 'conformance-basic',
      client_secret: SECRET,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'orders:read orders:write',
    },
    {
      client_id: 'conformance-post',
      client_secret: SECRET,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
      scope: 'orders:read',
    },
  ],
  scopes: ['orders:read', 'orders:write'],
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
  },
  ttl: { ClientCredentials: ttl },
});
provider.proxy = false;

let tokenRequests = 0;
let apiCalls = 0;
let unauthorized = 0;
const issued = [];
provider.use(async (ctx, next) => {
  if (ctx.path === '/token') tokenRequests += 1;
  await next();
});
provider.on('client_credentials.saved', (token) => issued.push(token.jti));

const tokens = http.createServer(provider.callback());

const api = http.createServer(async (req, res) => {
  const json = (status, body, headers = {}) => {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
      ...headers,
    });
    res.end(text);
  };
  if (req.url === '/admin/stats') {
    return json(200, { token_requests: tokenRequests, api_calls: apiCalls, unauthorized });
  }
  if (req.url === '/admin/revoke' && req.method === 'POST') {
    for (const jti of issued.splice(0)) {
      const token = await provider.ClientCredentials.find(jti);
      if (token) await token.destroy();
    }
    return json(200, { revoked: true });
  }
  apiCalls += 1;
  const header = req.headers.authorization || '';
  const value = header.startsWith('Bearer ') ? header.slice(7) : '';
  const token = value ? await provider.ClientCredentials.find(value) : undefined;
  if (!token || token.isExpired) {
    unauthorized += 1;
    return json(401, { error: 'invalid_token' }, {
      'www-authenticate': 'Bearer error="invalid_token"',
    });
  }
  return json(200, { path: req.url, client: token.clientId, scope: token.scope });
});

await new Promise((resolve) => tokens.listen(0, '127.0.0.1', resolve));
await new Promise((resolve) => api.listen(0, '127.0.0.1', resolve));
// The issuer as the server sees it: its own address.
const tokenPort = tokens.address().port;
provider.issuer = `http://127.0.0.1:${tokenPort}`;
process.stdout.write(
  `ready http://127.0.0.1:${tokenPort}/token http://127.0.0.1:${api.address().port}\n`,
);
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
