// relaygate's reference page: Swagger UI on this gateway's own document, with nothing
// fetched from elsewhere (no validator badge, no CDN).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    validatorUrl: null,
    deepLinking: true,
    tryItOutEnabled: false,
  });
});
