/* diffedu: make the ipywidgets HTML manager work offline, from this book's own _static folder.
 *
 * Loaded after require.js and before embed-amd.js (see nb_ipywidgets_js in _config.yml).
 * 1. The widget bundles compute where their fonts live from the AMD module's URL; map the
 *    module names to _static/widgets/ so fonts come from the book, not the page's folder.
 * 2. The widget manager typesets labels with the MathJax 2 API (MathJax.Hub.Queue); the book
 *    loads MathJax 3, so provide that one call on top of MathJax 3's typesetPromise.
 */
(function () {
  var widgets = new URL('../widgets/', document.currentScript.src).href.replace(/\/$/, '');
  var paths = {'@jupyter-widgets/html-manager/dist': widgets};
  ['base', 'base7', 'controls', 'controls7', 'html-manager', 'output'].forEach(function (name) {
    paths['@jupyter-widgets/' + name] = widgets + '/' + name;
  });
  window.require.config({paths: paths});

  function shim() {
    var mj = window.MathJax;
    if (!mj || mj.Hub) { return; }
    mj.Hub = {
      Queue: function (job) {
        var element = job && job[2];
        if (window.MathJax.typesetPromise) {
          window.MathJax.typesetPromise(element ? [element] : undefined).catch(function () {});
        }
      }
    };
  }
  shim();
  document.addEventListener('DOMContentLoaded', shim);
})();
